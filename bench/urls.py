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
