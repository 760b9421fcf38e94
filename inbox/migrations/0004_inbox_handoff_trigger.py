"""PostgreSQL only: each committed pending event announces its row to the hand-off dispatcher
(inbox/handoff.py: NOTIFY b24widget_handoff, 'inbox:<row pk>'). Other databases hand off in the request."""

from django.db import migrations

from inbox.handoff import announcing


class Migration(migrations.Migration):
    dependencies = [("inbox", "0003_lanes_fairness_retention")]

    operations = [announcing("inbox_handoff", table="portals_inboxitem", handoff="inbox", column="id")]
