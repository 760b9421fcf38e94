"""A channel's life: the connector registered on the portal, connected to a line, disconnected, revoked.

Register (install step, see portals/install_steps.py): `imconnector.register` for every connector in
the registry and `event.bind` of the connector events to <B24_APP_URL>/events/. Connect: one batch of
`imconnector.activate` + `imconnector.connector.data.set` + `imconnector.status`. Disconnect:
`imconnector.activate` with ACTIVE=0. Revoke (the line or the connector deleted in Bitrix24, or the app
uninstalled): relaying stops and the credentials go; the messages stay.
"""

import logging
import re
import uuid

from django.db import transaction
from django.utils import timezone

from bitrix24 import limits, wire
from bitrix24.errors import LimitWaitExceeded, RestError, TransportError
from portals.install import app_url, events_url
from portals.models import Portal
from portals.tokens import PortalClient

from . import registry
from .models import Channel

log = logging.getLogger(__name__)


class ConnectFailed(Exception):
    """Bitrix24 refused or did not answer; `code` is its error code. Nothing was stored as connected."""

    def __init__(self, code: str, description: str = "", *, retry_after: float | None = None):
        self.code = code
        self.description = description
        self.retry_after = retry_after  # a limit's wait: the caller may answer 429 with Retry-After
        super().__init__(f"{code}: {description}")


# --- registration (install, ONAPPUPDATE, admin re-bind) -------------------------------------------
def register_connectors(portal: Portal, client: PortalClient) -> list[str]:
    """Install step: register every connector and bind the connector events; returns the events bound."""
    commands = {f"register_{c.id}": ("imconnector.register", c.register_params()) for c in registry.REGISTRY.values()}
    commands.update(wire.rebind_commands(registry.CONNECTOR_EVENTS, events_url()))
    result = client.batch(commands)
    if any(e.code in _NO_SCOPE for k, e in result.errors.items() if k.startswith("register_")):
        # A portal that did not grant the Open Lines scopes keeps the widget; it just has no channel.
        log.warning("connectors not registered: scope not granted", extra={"member_id": portal.member_id})
        return []
    for key, error in result.errors.items():
        if key.startswith("unbind_") or wire.already_bound(error.code, error.description):
            continue
        raise RestError(error.code, f"{key}: {error.description}", method=error.method)
    for connector in registry.REGISTRY.values():
        # imconnector-register.md: errors come as HTTP 200 with result.result = false.
        answer = result.result.get(f"register_{connector.id}")
        if not (isinstance(answer, dict) and answer.get("result") is True):
            answer = answer if isinstance(answer, dict) else {}
            raise RestError(
                str(answer.get("error") or "APPLICATION_REGISTRATION_ERROR"),
                str(answer.get("error_description") or "")[:255],
                method="imconnector.register",
            )
    log.info("connectors registered", extra={"member_id": portal.member_id})
    return list(registry.CONNECTOR_EVENTS)


_NO_SCOPE = frozenset({"insufficient_scope", "ACCESS_DENIED", "WRONG_AUTH_TYPE"})


# --- connect / disconnect (SETTING_CONNECTOR, the Contact Center overview) --------------------------
def channel_url(channel: Channel) -> str:
    """The channel's own address (connector.data.set URL): what the channel is, no secret."""
    return app_url("openlines-channel", channel_id=channel.public_id)


def inbound_url(channel: Channel) -> str:
    """Where the outside system POSTs its messages (the channel API)."""
    return app_url("openlines-messages", channel_id=channel.public_id)


def connect(
    portal: Portal, connector: registry.Connector, line_id: str, *, user_id: str, name: str = "", webhook_url: str = ""
) -> tuple[Channel, str]:
    """Connect the connector to the line; returns (channel, its new secret, to be shown once).

    Raises ConnectFailed when Bitrix24 refuses; the channel then stays as it was, and a line connected for the
    first time (one Bitrix24 does not have, say) leaves no row behind: it is stored once Bitrix24 agreed."""
    found = Channel.objects.filter(portal=portal, connector_id=connector.id, line_id=line_id).first()
    # Bitrix24 is told the channel's id (connector.data.set) before the row exists: a new channel's id is made here.
    channel = found or Channel(portal=portal, connector_id=connector.id, line_id=line_id, public_id=uuid.uuid4())
    name = (name or channel.name or f"{connector.name} ({line_id})")[:128]
    result = _batch(
        portal,
        {
            "activate": ("imconnector.activate", {"CONNECTOR": connector.id, "LINE": line_id, "ACTIVE": 1}),
            "data": (
                "imconnector.connector.data.set",
                {
                    "CONNECTOR": connector.id,
                    "LINE": line_id,
                    "DATA": {
                        "ID": str(channel.public_id),
                        "URL": channel_url(channel),
                        "URL_IM": channel_url(channel),
                        "NAME": name,
                    },
                },
            ),
            "status": ("imconnector.status", {"CONNECTOR": connector.id, "LINE": line_id}),
        },
    )
    status = result.result.get("status")
    if not isinstance(status, dict) or status.get("STATUS") is not True:
        raise ConnectFailed("not_active", "Bitrix24 does not report the connector active on this line")
    with transaction.atomic():
        # (Two administrators connecting a new line at once: the first row stored is the channel.)
        channel, _created = Channel.objects.select_for_update().get_or_create(
            portal=portal,
            connector_id=connector.id,
            line_id=line_id,
            defaults={"public_id": channel.public_id, "state": Channel.State.DISCONNECTED},
        )
        secret = channel.new_secret()
        channel.state = Channel.State.CONNECTED
        channel.name = name
        if webhook_url:
            channel.webhook_url = webhook_url
        channel.connected_by = user_id
        channel.connected_at = timezone.now()
        channel.disconnected_at = None
        channel.last_error = ""
        channel.save()
    log.info("channel connected", extra={"member_id": portal.member_id, "line": line_id, "user_id": user_id})
    return channel, secret


_LINES_PAGE = 200  # imopenlines-config-list-get.md: PARAMS.limit at most 200; pages by PARAMS.offset, no "next"
_LINES_MAX = 5000
_LINES_FRESH = 60  # seconds a portal's list of lines is reused: the overview's list costs Bitrix24 once a minute
_LINE_ID = re.compile(r"[0-9]{1,10}")  # ASCII digits: str.isdigit() also admits "²"


def open_lines(portal: Portal) -> list[dict]:
    """Every Open Line of the portal ({"id", "name"}), page by page, reused for a minute; raises ConnectFailed.

    Whoever holds a widget token of the portal (any of its users) can ask for this as often as they like:
    the cache keeps that to one listing a minute per portal."""
    key = f"b24widget:openlines:lines:{portal.pk}:{portal.member_id}"
    cached = limits.cache.get(key)
    if isinstance(cached, list):
        return cached
    client = PortalClient(portal, interactive=True)
    out, offset = [], 0
    while offset < _LINES_MAX:
        try:
            page = client.call(
                "imopenlines.config.list.get",
                {
                    "PARAMS": {
                        "select": ["ID", "LINE_NAME"],
                        "order": {"ID": "asc"},
                        "limit": _LINES_PAGE,
                        "offset": offset,
                    }
                },
            )
        except RestError as exc:
            raise _failed(exc) from None
        page = page if isinstance(page, list) else []
        out += [
            {"id": str(line["ID"]), "name": str(line.get("LINE_NAME") or line["ID"])[:128]}
            for line in page
            if isinstance(line, dict)
            and not isinstance(line.get("ID"), bool)
            and _LINE_ID.fullmatch(str(line.get("ID", "")))
        ]
        offset += len(page)  # lines this page held, valid or not
        if len(page) < _LINES_PAGE:
            break
    limits.cache.set(key, out, _LINES_FRESH)
    return out


def rotate_secret(channel: Channel) -> str:
    """A new secret for a connected channel (the old one stops working at once); shown once."""
    with transaction.atomic():
        channel = Channel.objects.select_for_update().get(pk=channel.pk)
        secret = channel.new_secret()
        channel.save(update_fields=["secret", "secret_rotated_at"])
    return secret


def disconnect(portal: Portal, channel: Channel, *, user_id: str) -> str:
    """Revoke the channel's credentials (history stays), then deactivate the connector on the line.

    The credentials go first and whatever Bitrix24 answers: a line Bitrix24 no longer knows (deleted,
    inactive) must not keep a working secret. Returns Bitrix24's error code when it refused, else ""."""
    revoke(channel, state=Channel.State.DISCONNECTED)
    refused = ""
    try:
        _batch(
            portal,
            {
                "activate": (
                    "imconnector.activate",
                    {"CONNECTOR": channel.connector_id, "LINE": channel.line_id, "ACTIVE": 0},
                )
            },
        )
    except ConnectFailed as exc:
        refused = exc.code
        Channel.objects.filter(pk=channel.pk).update(last_error=f"deactivate: {exc.code}"[:255])
    log.info(
        "channel disconnected",
        extra={"member_id": portal.member_id, "line": channel.line_id, "user_id": user_id, "code": refused},
    )
    return refused


def revoke(channel: Channel, *, state: str = Channel.State.REVOKED, reason: str = "") -> None:
    Channel.objects.filter(pk=channel.pk).update(
        state=state, secret="", disconnected_at=timezone.now(), last_error=reason[:255]
    )
    channel.state, channel.secret = state, ""


class StillActive(Exception):
    """Bitrix24 still reports the connector active on the line: a teardown event it did not send."""


def revoke_line(portal: Portal, line_id: str, *, connector_id: str | None = None, reason: str) -> int:
    """Teardown for OnImConnectorLineDelete / OnImConnectorStatusDelete: returns the channels revoked.

    The event is believed only once the portal confirms it: its application_token alone is known to every
    user of the portal (it is in every placement POST), so before a channel's credentials go, Bitrix24 is
    asked (`imconnector.status` with the app's token) whether the connector is still active on the line.
    Raises StillActive when it is (nothing revoked), RestError when Bitrix24 could not be asked."""
    channels = list(Channel.objects.filter(portal=portal, line_id=line_id).exclude(state=Channel.State.REVOKED))
    if connector_id is not None:
        channels = [c for c in channels if c.connector_id == connector_id]
    for channel in channels:
        if _connector_active(portal, channel.connector_id, line_id):
            raise StillActive(f"Bitrix24 still reports {channel.connector_id} active on line {line_id}")
    for channel in channels:
        revoke(channel, reason=reason)
    return len(channels)


# A line Bitrix24 no longer has: imconnector.status may answer so instead of STATUS false.
_LINE_GONE = frozenset({"NOT_ACTIVE_LINE", "ERROR_ARGUMENT", "NOT_FOUND"})


def _connector_active(portal: Portal, connector_id: str, line_id: str) -> bool:
    """imconnector-status.md: STATUS is true while the connector is active and configured on the line."""
    try:
        answer = PortalClient(portal).call("imconnector.status", {"CONNECTOR": connector_id, "LINE": line_id})
    except RestError as exc:
        if exc.code in _LINE_GONE and not isinstance(exc, (TransportError, LimitWaitExceeded)):
            return False
        raise
    return isinstance(answer, dict) and answer.get("STATUS") is True


def _failed(exc: RestError) -> ConnectFailed:
    return ConnectFailed(
        exc.code, exc.description, retry_after=exc.retry_after if isinstance(exc, LimitWaitExceeded) else None
    )


def _batch(portal: Portal, commands: dict):
    try:
        result = PortalClient(portal, interactive=True).batch(commands, halt=True)
    except RestError as exc:
        raise _failed(exc) from None
    if result.errors:
        key, error = next(iter(result.errors.items()))
        raise ConnectFailed(error.code, f"{key}: {error.description}")
    return result
