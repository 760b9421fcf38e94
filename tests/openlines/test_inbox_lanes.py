"""The inbox under a flood (issue 23): a stranger's forged events for a known portal wait in their own lane,
and never hold back the portal's genuine events (its uninstall, its operator replies).

The inbox is processed in the test process (inbox.process_pending, no broker), as tests/conftest.deliver does.
"""

from datetime import timedelta
from urllib.parse import urlencode

import pytest
from django.db import connection
from django.utils import timezone

from inbox import queue as inbox
from inbox.models import InboxItem
from openlines.models import Channel
from portals.models import Portal
from sandbox.standin import rest_imconnector as imc
from tests.openlines.conftest import message, signed

pytestmark = pytest.mark.django_db
State, Lane = InboxItem.State, InboxItem.Lane


@pytest.fixture
def conversation(client, channel, django_capture_on_commit_callbacks):
    """A customer wrote: (channel row, stand-in portal, Open Lines chat id)."""
    row, secret, b24 = channel
    with django_capture_on_commit_callbacks(execute=True):
        assert signed(client, row, secret, message("m1", "Hi, I need help")).status_code == 202
    return row, b24, imc.conversations(b24)[0]["chat_id"]


def post(client, payload, **kwargs):
    """POST to /events/ as Bitrix24 (or a forger) does; the inbox's own send after commit is dropped (no broker
    here: the test processes the inbox itself)."""
    before = len(connection.run_on_commit)
    response = client.post("/events/", payload, **kwargs)
    connection.run_on_commit[before:] = [
        entry for entry in connection.run_on_commit[before:] if entry[1].__module__ != "inbox.queue"
    ]
    return response


def forged_install(b24, n: int) -> dict:
    """A stranger's ONAPPINSTALL for the portal: the member_id is easy to learn, the application_token is not."""
    return b24.event_payload("ONAPPINSTALL", with_tokens=False, application_token=f"forged-{n}", data={"N": str(n)})


@pytest.mark.slow  # 300 posts to /events/: about 5 s
def test_a_flood_of_forged_events_never_holds_back_the_portals_genuine_ones(
    client, conversation, receiver, sink, settings, django_capture_on_commit_callbacks
):
    settings.B24_INBOX_UNVERIFIED_BURST = 1000  # the per-portal budget for strangers' events lets them all in
    settings.B24_INBOX_UNPROVEN_PER_MINUTE = 0  # (the deployment-wide one: off here)
    row, b24, chat_id = conversation
    for n in range(300):
        assert post(client, forged_install(b24, n)).status_code == 200
    forged = InboxItem.objects.filter(event="ONAPPINSTALL", lane=Lane.UNPROVEN, state=State.PENDING)
    assert forged.count() == 300
    # A worker is busy with the first forged event (its OAuth check hangs): every later one of its lane waits.
    first = forged.order_by("id").first()
    InboxItem.objects.filter(pk=first.pk).update(
        state=State.PROCESSING, lease_owner="another-worker", lease_until=timezone.now() + timedelta(minutes=10)
    )
    # The operator replies: relayed at once, although 300 older events of the portal wait.
    imc.operator_reply(b24, chat_id, "Still there?", handlers=[sink.url])
    [reply] = sink.got
    assert post(client, urlencode(reply), content_type="application/x-www-form-urlencoded").status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        inbox.process_pending()
    assert InboxItem.objects.get(event="ONIMCONNECTORMESSAGEADD").state == State.DONE
    assert receiver.texts() == ["Still there?"]
    # Then the administrator uninstalls the app with CLEAN=1: applied, the data cleaned.
    b24.uninstall()
    assert post(client, b24.event_payload("ONAPPUNINSTALL", data={"CLEAN": "1"})).status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        inbox.process_pending()
    assert InboxItem.objects.get(event="ONAPPUNINSTALL").state == State.DONE
    portal = Portal.objects.get(member_id=b24.member_id)
    assert portal.status == Portal.Status.UNINSTALLED
    assert not Channel.objects.filter(portal=portal).exists()  # CLEAN=1 applied
    # The forged ones still wait, in their own lane, behind the one the other worker holds.
    assert forged.count() == 299 and InboxItem.objects.get(pk=first.pk).state == State.PROCESSING
