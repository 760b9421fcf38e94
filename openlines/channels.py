"""What an administrator does to a channel from SETTING_CONNECTOR or the overview: connect, disconnect,
rotate its secret, save its webhook. One service the view calls; each refusal is a Refusal."""

from django.utils.translation import gettext as _

from bitrix24.errors import Refusal
from portals.models import Portal

from . import lifecycle, registry, tasks
from .models import Channel


class ActionRefused(Refusal):
    """A connector action that cannot be done: `reason` is the JSON error code, `description` the message."""

    def __init__(self, reason: str, description: str, status: int, retry_after: float | None = None):
        super().__init__(reason, status, retry_after)
        self.description = description


def as_json(channel: Channel) -> dict:
    return {
        "id": str(channel.public_id),
        "state": channel.state,
        "line": channel.line_id,
        "name": channel.name,
        "webhook_url": channel.webhook_url,
        "endpoint": lifecycle.inbound_url(channel),
    }


def act(
    action: str,
    portal: Portal,
    connector: registry.Connector,
    line: str,
    *,
    user_id: str,
    name: str = "",
    webhook_url: str = "",
) -> dict:
    """Do `action` (connect, disconnect, rotate, save) on the portal's channel for `line`; returns the answer."""
    channel = Channel.objects.filter(portal=portal, connector_id=connector.id, line_id=line).first()
    try:
        if action == "connect":
            channel, secret = lifecycle.connect(
                portal, connector, line, user_id=user_id, name=name, webhook_url=webhook_url
            )
            return {
                "result": "connected",
                "channel": as_json(channel),
                "secret": secret,
                "message": _("Connected. Copy the secret now: it is shown only once."),
            }
        if channel is None or not channel.is_connected:
            raise ActionRefused("not_connected", _("This channel is not connected."), 409)
        if action == "disconnect":
            refused = lifecycle.disconnect(portal, channel, user_id=user_id)
            message = _("Disconnected. The channel's credentials no longer work.")
            if refused:
                message += " " + _(
                    "Bitrix24 refused to deactivate the connector on the line (%(code)s); it "
                    "may still show there, but relays nothing."
                ) % {"code": refused}
            return {
                "result": "disconnected",
                "channel": as_json(channel),
                "bitrix24_error": refused,
                "message": message,
            }
        if action == "rotate":
            secret = lifecycle.rotate_secret(channel)
            return {
                "result": "rotated",
                "channel": as_json(channel),
                "secret": secret,
                "message": _("New secret made. The old one no longer works."),
            }
        Channel.objects.filter(pk=channel.pk).update(webhook_url=webhook_url)
        channel.webhook_url = webhook_url
        if webhook_url:
            tasks.release_parked(channel.pk)  # replies that waited for an address go now
        return {"result": "saved", "channel": as_json(channel), "message": _("Saved.")}
    except lifecycle.ConnectFailed as exc:
        if exc.retry_after:
            raise ActionRefused("busy", _("Bitrix24 did not answer. Please try again."), 429, exc.retry_after) from None
        raise ActionRefused("bitrix24_refused", _("Bitrix24 refused: %(code)s") % {"code": exc.code}, 502) from None
