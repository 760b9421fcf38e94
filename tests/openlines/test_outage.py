"""The app unreachable (issue 23): operators write 20 replies, edit one and delete one while every event of the
portal fails, and a second portal uninstalls the app meanwhile. The app back: every reply reaches the outside system
exactly once, in order per chat, the edit and the deletion follow, and the uninstall is applied: with offline events
(the portals' queues, api-reference/events/offline-events.md), and again without them (the plan lacks
rest_offline_extended: reconciliation alone, openlines/reconcile.py)."""

import pytest

from inbox import offline
from inbox import queue as inbox
from openlines import reconcile
from portals import maintenance
from portals.models import Portal
from sandbox.standin import rest_imconnector as imc
from tests.conftest import do_install
from tests.openlines.conftest import message, signed

pytestmark = pytest.mark.django_db


def _bodies(receiver) -> list[tuple[str, str, str]]:
    return [(h["json"]["chat"]["id"], h["json"]["event"], h["json"]["message"]["text"]) for h in receiver.got]


@pytest.mark.parametrize("offline_events", [True, False], ids=["offline events", "reconciliation only"])
def test_replies_edits_deletions_and_an_uninstall_written_while_the_app_was_down(
    client, standin, channel, receiver, sink, django_capture_on_commit_callbacks, offline_events
):
    row, secret, b24 = channel
    other = standin.add_portal()
    if not offline_events:
        other.set_feature("rest_offline_extended", False)  # its plan never had them: nothing bound offline
    do_install(client, other)
    with django_capture_on_commit_callbacks(execute=True):
        for outside in ("chat-a", "chat-b"):
            body = message(f"m-{outside}", f"Hello from {outside}", chat=outside, user=f"u-{outside}")
            assert signed(client, row, secret, body).status_code == 202
    chat = {c["external_chat"]: c["chat_id"] for c in imc.conversations(b24)}
    if not offline_events:
        b24.set_feature("rest_offline_extended", False)  # bound at install, refused from now on
    # Two replies relayed as usual before the outage: one is edited and the other deleted during it.
    with django_capture_on_commit_callbacks(execute=True):
        kept, _ = imc.operator_reply(b24, chat["chat-a"], "kept", handlers=[sink.url])
        doomed, _ = imc.operator_reply(b24, chat["chat-b"], "doomed", handlers=[sink.url])
        sink.relay(client)
    receiver.got.clear()

    b24.app_unreachable()
    other.app_unreachable()
    for n in range(10):
        imc.operator_reply(b24, chat["chat-a"], f"a{n}")
        imc.operator_reply(b24, chat["chat-b"], f"b{n}")
    imc.operator_edit(b24, chat["chat-a"], kept, "kept, edited")
    imc.operator_delete(b24, chat["chat-b"], doomed)
    other.uninstall()
    other.deliver_event("ONAPPUNINSTALL", data={"CLEAN": "0"})  # fails: the app is unreachable
    assert Portal.objects.get(member_id=other.member_id).status == Portal.Status.ACTIVE

    b24.app_unreachable(False)
    other.app_unreachable(False)
    with django_capture_on_commit_callbacks(execute=True):
        # What the beat does once the app is back: pull each portal's offline queue, process the inbox, and the
        # reconciliation pass over each connected line (run in both cases: it must add nothing twice).
        for member_id in (b24.member_id, other.member_id):
            offline.pull(member_id)
        inbox.process_pending()
    with django_capture_on_commit_callbacks(execute=True):
        reconcile.reconcile_pass()
        inbox.process_pending()

    got = _bodies(receiver)
    for outside, letter in (("chat-a", "a"), ("chat-b", "b")):
        adds = [text for c, event, text in got if c == outside and event == "message.add"]
        assert adds == [f"{letter}{n}" for n in range(10)]  # each once, in the order written
    assert [(c, e, t) for c, e, t in got if e == "message.update"] == [("chat-a", "message.update", "kept, edited")]
    assert [(c, e) for c, e, _ in got if e == "message.delete"] == [("chat-b", "message.delete")]
    assert len(got) == 22
    # The second portal's uninstall: from its offline queue's refused pull (the app is gone from it), or, without
    # offline events, from what the next check of the portal learns.
    if offline_events:
        assert Portal.objects.get(member_id=other.member_id).status == Portal.Status.UNINSTALLED
    else:
        # Nothing was bound offline on its plan: the portals' sync pass (beat, every 6 hours) finds the app gone
        # and the inbox confirms and applies the uninstall.
        pk = Portal.objects.get(member_id=other.member_id).pk
        assert Portal.objects.get(pk=pk).status == Portal.Status.ACTIVE
        with django_capture_on_commit_callbacks(execute=True):
            assert maintenance.sync_portal(pk).kind == maintenance.CHANGED
            inbox.process_pending()
        assert Portal.objects.get(pk=pk).status == Portal.Status.UNINSTALLED
