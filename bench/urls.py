"""The project's URLs plus bare views: the ceilings the widget open and the event ingest are compared with."""

import secrets

from django.http import HttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from b24widget.urls import urlpatterns as project_urlpatterns


@csrf_exempt  # the bench POSTs the widget's body here too, through the same middleware
def bare(request):
    return HttpResponse("ok")


@csrf_exempt
def insert(request):
    """One INSERT of an inbox row, nothing else: what storing an event costs at the least."""
    from inbox.models import InboxItem

    InboxItem.objects.create(member_id="bench", event="BENCH", idempotency_key=secrets.token_hex(32))
    return HttpResponse("ok")


urlpatterns = [
    path("bench/bare/", bare, name="bench-bare"),
    path("bench/insert/", insert, name="bench-insert"),
    *project_urlpatterns,
]


# The channel's row as the floor view last read it, by public id (only for `floor_channel(..., cached=True)`).
_FLOOR_ROWS: dict = {}


@csrf_exempt
def floor_channel(request, channel_id, cached=False, lean=False):
    """The channel API's required work and nothing else: the floor a leaner implementation could reach.

    What the threat model requires of an accepted message (docs/threat-model.md, the channel API): read the
    channel's row (its secret; connected; its portal serving), check the signature, take one unit of the
    channel's budget (Redis), store the message (one INSERT) and mark the channel's task (one UPDATE), each as
    a hand-written statement through Django's cursor, with no validation of the body beyond reading two ids,
    no model instances and no logging. `cached`: the row read once per process and its state checked inside
    the INSERT instead (`INSERT ... SELECT ... WHERE EXISTS`), one round trip fewer. `lean` (implies `cached`):
    no mark either, another process taking the hand-off to the workers off the request: the shape the channel
    API has had since the hand-off dispatcher (inbox/handoff.py), done by hand, without its validation. The
    budget is out of reach, as bench/ingest.py sets the real one; a bad signature is a 401.
    """
    cached = cached or lean
    import hashlib
    import hmac
    import json

    from django.db import connection
    from django.utils import timezone

    from bitrix24 import limits
    from openlines.inbound import _unseal
    from openlines.models import Channel, InboundMessage
    from portals.models import Portal

    channels, portals, messages = Channel._meta.db_table, Portal._meta.db_table, InboundMessage._meta.db_table
    body = request.body
    row = _FLOOR_ROWS.get(channel_id) if cached else None
    if row is None:
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT c.id, c.secret, c.state, p.status FROM {channels} c JOIN {portals} p ON p.id = c.portal_id "
                "WHERE c.public_id = %s",
                [channel_id],
            )
            row = _FLOOR_ROWS[channel_id] = cursor.fetchone()
    pk, sealed, state, status = row
    if not cached and (state != "connected" or status not in ("new", "active")):
        return HttpResponse("disconnected", status=409)
    ts = request.META["HTTP_X_B24WIDGET_TIMESTAMP"]
    mac = hmac.new(_unseal(sealed).encode(), f"v2.inbound.{ts}.".encode() + body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(f"sha256={mac}", request.META["HTTP_X_B24WIDGET_SIGNATURE"]):
        return HttpResponse("bad signature", status=401)
    limits.refused_for(f"openlines:inbound:{channel_id}", per_minute=1e9, burst=10**9)
    element = json.loads(body)
    now = timezone.now()
    values = "%s, 'add', %s, %s, %s, %s, 'pending', 0, %s, %s, '', '', '', NULL"
    source = (
        f"SELECT {values} WHERE EXISTS (SELECT 1 FROM {channels} c JOIN {portals} p ON p.id = c.portal_id "
        "WHERE c.id = %s AND c.secret = %s AND c.state = 'connected' AND p.status IN ('new', 'active'))"
        if cached
        else f"VALUES ({values})"
    )
    params = [pk, secrets.token_hex(16), element["chat"]["id"], element["message"]["id"], body.decode(), now, now]
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {messages} (channel_id, action, key, external_chat_id, external_message_id, payload, state, "
            "attempts, next_attempt_at, received_at, last_error, im_chat_id, session_id, sent_at) "
            f"{source} RETURNING id",
            params + ([pk, sealed] if cached else []),
        )
        found = cursor.fetchone()
        if found is None:
            return HttpResponse("disconnected", status=409)
        if lean:
            return _accepted(found[0])
        cursor.execute(
            f"UPDATE {channels} SET inbound_queued_at = %s WHERE id = %s AND (inbound_queued_at IS NULL "
            "OR inbound_queued_at < %s OR inbound_queued_at > %s)",
            [now, pk, now, now],
        )
    return _accepted(found[0])


def _accepted(row: int, status: int = 202) -> HttpResponse:
    return HttpResponse(b'{"result": "accepted", "id": %d}' % row, content_type="application/json", status=status)


@csrf_exempt
def floor_events(request, lean=False):
    """`/events/`' required work and nothing else (as `floor_channel`): read the portal's row by the event's
    member_id and compare the application_token's digest, take one unit of the portal's budget (Redis), seal
    the event's auth (the vault's Fernet) and store the row with its duplicate check in the INSERT, then ask
    whether an earlier event of the portal's lane still waits (the lane's order). No parsing beyond the form's
    pairs, no validation, no model instances, no logging. `lean`: the portal's row read once per process and its
    token's digest checked inside the INSERT instead, and the lane not asked (as `floor_channel`'s `lean`: the
    shape `/events/` has had since the hand-off dispatcher, done by hand)."""
    import hmac
    import json
    from urllib.parse import parse_qsl

    from django.db import connection
    from django.utils import timezone

    from bitrix24 import limits
    from inbox.models import InboxItem
    from portals.models import Portal, token_digest
    from vault.fields import encrypt

    items, portals = InboxItem._meta.db_table, Portal._meta.db_table
    form = dict(parse_qsl(request.body.decode()))
    member_id, token = form["auth[member_id]"], form["auth[application_token]"]
    row = _FLOOR_ROWS.get(member_id) if lean else None
    if row is None:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT id, application_token_digest FROM {portals} WHERE member_id = %s", [member_id])
            row = _FLOOR_ROWS[member_id] = cursor.fetchone()
    pk, digest = row
    if not hmac.compare_digest(digest, token_digest(token)):
        return HttpResponse("refused", status=403)
    limits.refused_for(f"inbox-portal:{member_id}", per_minute=1e9, burst=10**9)
    auth = {k: v for k, v in form.items() if k.startswith("auth[")}
    data = {k: v for k, v in form.items() if k.startswith("data[")}
    now = timezone.now()
    key = secrets.token_hex(32)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {items} (portal_id, member_id, event, event_handler_id, source, lane, data, sealed_auth, ts, "
            "idempotency_key, state, attempts, received_at, next_attempt_at, enqueued_at, lease_owner, lease_until, "
            "finished_at, outcome, last_error) SELECT %s, %s, %s, '', 'online', 'proven', %s, %s, %s, %s, 'pending', "
            f"0, %s, %s, NULL, '', NULL, NULL, '', '' WHERE NOT EXISTS (SELECT 1 FROM {items} WHERE idempotency_key = "
            "%s AND state = 'done')"
            + (f" AND EXISTS (SELECT 1 FROM {portals} WHERE id = %s AND application_token_digest = %s)" if lean else "")
            + " RETURNING id",
            [
                pk,
                member_id,
                form["event"],
                json.dumps(data),
                encrypt(json.dumps(auth)),
                form.get("ts", ""),
                key,
                now,
                now,
                key,
            ]
            + ([pk, digest] if lean else []),
        )
        found = cursor.fetchone()
        if found is None:
            return HttpResponse("refused", status=403)
        row = found[0]
        if lean:
            return _accepted(row, 200)
        cursor.execute(
            f"SELECT 1 FROM {items} WHERE member_id = %s AND lane = 'proven' AND state IN ('pending', 'processing') "
            "AND id < %s LIMIT 1",
            [member_id, row],
        )
        cursor.fetchone()
    return _accepted(row, 200)


urlpatterns = [
    path("bench/floor/events/", floor_events),
    path("bench/floor/events/lean", floor_events, {"lean": True}),
    path("bench/floor/channel/<uuid:channel_id>", floor_channel),
    path("bench/floor/channel/<uuid:channel_id>/cached", floor_channel, {"cached": True}),
    path("bench/floor/channel/<uuid:channel_id>/lean", floor_channel, {"lean": True}),
    *urlpatterns,
]
