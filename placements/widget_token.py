"""The short-lived signed token a widget frame carries to save settings (no third-party cookies)."""

from dataclasses import dataclass

from django.conf import settings
from django.core import signing

from portals.models import Portal

from .auth import Verdict

_SALT = "placements.widget-token"


class BadWidgetToken(Exception):
    """Missing, tampered or expired; `reason` says which."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class WidgetToken:
    portal_id: int
    installed: int  # the portal's install (installed_at in microseconds): a token dies with a reinstall
    member_id: str
    user_id: str
    is_admin: bool


def install_epoch(portal: Portal) -> int:
    return round(portal.installed_at.timestamp() * 1_000_000) if portal.installed_at else 0


def issue(portal: Portal, verdict: Verdict) -> str:
    return signing.dumps(
        {
            "p": portal.pk,
            "m": portal.member_id,
            "i": install_epoch(portal),
            "u": verdict.user_id,
            "a": verdict.is_admin,
        },
        salt=_SALT,
        compress=True,
    )


def read(value: str) -> WidgetToken:
    if not value:
        raise BadWidgetToken("missing")
    try:
        data = signing.loads(value, salt=_SALT, max_age=settings.B24_WIDGET_TOKEN_MAX_AGE)
    except signing.SignatureExpired:
        raise BadWidgetToken("expired") from None
    except signing.BadSignature:
        raise BadWidgetToken("tampered") from None
    try:
        return WidgetToken(
            portal_id=int(data["p"]),
            installed=int(data["i"]),
            member_id=str(data["m"]),
            user_id=str(data["u"]),
            is_admin=data["a"] is True,
        )
    except (KeyError, TypeError, ValueError):
        raise BadWidgetToken("tampered") from None
