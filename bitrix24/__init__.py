"""The Bitrix24 platform client: a plain package (no models; imports no Django app).

One module per concern, each citing the Bitrix24 doc page it follows:

- `http`       every outward request: a total deadline, a size cap, a reused session per thread
- `addresses`  what a portal's (or a webhook's) address may be; what counts as public
- `wire`       the small vocabulary of the wire: member_id, ids, tokens, app statuses, error clipping,
               bind/unbind commands, Retry-After
- `errors`     the one error family (`Bitrix24Error`) and `Refusal`, what an entry point answers
- `oauth`      the OAuth server: refresh (returns a grant, stores nothing), token facts (`app.info`)
- `client`     REST for one portal through the `Credentials` protocol: call, batch, list; retries,
               limits, portal moves; a refresh is the credentials' step, and the caller stores its result
- `paging`     list strategies on the public batch call
- `limits`     pacing and budgets (leaky bucket, operating time, admission); `cache` the shared cache
               that falls back to process memory when it fails
- `frames`     the frame POST Bitrix24 sends into an app's iframe, and who may frame our answer
- `responses`  how a refusal is answered: one renderer for JSON callers, one for pages in a frame
- `metrics`    the client's Prometheus series (REST calls, limit waits and answers)

Django's settings and cache are used (they are configuration, not apps); nothing here writes to the
database: `portals` implements the credentials and persists what the client returns.
"""
