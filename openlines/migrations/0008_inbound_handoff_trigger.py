"""PostgreSQL only: each committed inbound message announces its channel to the hand-off dispatcher
(inbox/handoff.py: NOTIFY b24widget_handoff, 'inbound:<channel pk>'). Other databases hand off in the request."""

from django.db import migrations

from inbox.handoff import announcing


class Migration(migrations.Migration):
    dependencies = [("openlines", "0007_message_prune_runs")]

    operations = [
        announcing(
            "openlines_inbound_handoff", table="openlines_inboundmessage", handoff="inbound", column="channel_id"
        )
    ]
