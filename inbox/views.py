"""`/events/`: every event Bitrix24 delivers, stored before we answer (no outbound call in the request)."""

from django.http import HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods

from bitrix24.responses import json_error, json_refusal

from . import parsing, queue
from .registry import Refused, directory


@sensitive_post_parameters()
@csrf_exempt
@require_http_methods(["POST"])
def events_view(request):
    """Cheap checks, stored in the inbox, answered at once.

    A refused event changes nothing and gets a 4xx; a repeated delivery is answered 200 and changes nothing.
    """
    try:
        event = parsing.parse(request)
    except parsing.BadEvent as exc:
        return json_error("bad_request", str(exc), 400)
    except Refused as exc:
        return json_refusal(exc, code="refused")
    try:
        item, created = queue.accept(
            event.name,
            member_id=event.member_id,
            data=event.data,
            auth=event.auth,
            ts=event.ts,
            event_handler_id=event.event_handler_id,
        )
    except Refused as exc:
        if exc.status in (400, 403, 404, 409):
            directory().refused(event.member_id, source=event.name, reason=exc.reason)
        return json_refusal(exc, code="refused")
    # (the answer's JSON written out: JsonResponse's encoder is a visible share of this path's CPU)
    return HttpResponse(
        b'{"result": "%s", "id": %d}' % (b"accepted" if created else b"duplicate", item.pk),
        content_type="application/json",
    )
