"""Bitrix24 events, durable: what reaches `/events/` is stored before we answer, then applied by workers.

The API other apps use: `inbox.registry` (register handlers, Retry / Later / Reject, the portal directory),
`inbox.queue` (accept, accept_offline, process, sweep, replay, backlog, waiting), `inbox.parsing` (the event
POST), `inbox.offline` (the pull of a portal's offline queue).
"""
