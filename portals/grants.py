"""An administrator's grant: the only proof that may create or replace a portal's tokens or its
`application_token`.

Every user of a portal holds genuine tokens of our app (each placement POST carries `AUTH_ID` and
`REFRESH_ID`), so "the OAuth server confirmed this refresh token" proves only *some* user of *some*
portal. A grant changes an install only when, in addition, the OAuth server names the expected
portal and that portal says the grant's own user is an administrator (`user.admin`, asked with the
grant's access token at the address the OAuth server confirmed).
"""

import logging
from collections.abc import Callable

from django.views.decorators.debug import sensitive_variables

from bitrix24 import oauth
from bitrix24.errors import Refusal, RestError

from .models import Portal
from .tokens import PortalClient

log = logging.getLogger(__name__)


class GrantRefused(Refusal):
    """The grant may not change the install. `reason` is a stable code; `status` the HTTP answer;
    `retry_after` seconds for throttled or temporary refusals."""


@sensitive_variables()
def administrator_grant(
    member_id: str, refresh_token: str, *, before_spending: Callable[[], object] | None = None
) -> oauth.TokenGrant:
    """Exchange an unverified refresh token and prove it an administrator's of portal `member_id`.

    The refresh token is spent only after the sender's budget allows it and `before_spending()` (if
    given) returned; nothing is stored here. Raises GrantRefused (or what before_spending raises).
    """
    try:
        grant = oauth.exchange_unverified(member_id, refresh_token, before_spending=before_spending)
    except oauth.OAuthThrottled as exc:
        raise GrantRefused("throttled", status=429, retry_after=exc.retry_after) from None
    except oauth.ClientMisconfigured:
        raise GrantRefused("deployment_misconfigured", status=503, retry_after=60) from None
    except oauth.OAuthRejected as exc:
        raise GrantRefused(f"oauth_{exc.code}"[:64]) from None
    except oauth.OAuthUnavailable:
        raise GrantRefused("oauth_unavailable", status=503, retry_after=30) from None
    if grant.member_id != member_id:
        raise GrantRefused("wrong_member")
    if not is_administrator(grant):
        raise GrantRefused("not_admin")
    return grant


def is_administrator(grant: oauth.TokenGrant) -> bool:
    """Whether the portal says the grant's user administers it (raises GrantRefused when it cannot say)."""
    probe = Portal(member_id=grant.member_id, client_endpoint=grant.client_endpoint, domain=grant.domain)
    try:
        answer = PortalClient(probe, access_token=grant.access_token, interactive=True).call("user.admin")
    except RestError as exc:
        log.info("administrator check failed", extra={"member_id": grant.member_id, "code": exc.code})
        raise GrantRefused("bitrix24_unavailable", status=503, retry_after=30) from None
    return answer is True
