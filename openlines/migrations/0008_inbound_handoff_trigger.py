"""PostgreSQL only: each committed inbound message announces its channel to the hand-off dispatcher
(inbox/handoff.py: NOTIFY b24widget_handoff, 'inbound:<channel pk>'). Other databases hand off in the request."""

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION openlines_inbound_handoff() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('b24widget_handoff', 'inbound:' || NEW.channel_id);
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS openlines_inbound_handoff ON openlines_inboundmessage;
CREATE TRIGGER openlines_inbound_handoff AFTER INSERT ON openlines_inboundmessage
    FOR EACH ROW WHEN (NEW.state = 'pending') EXECUTE FUNCTION openlines_inbound_handoff();
"""
DROP = """
DROP TRIGGER IF EXISTS openlines_inbound_handoff ON openlines_inboundmessage;
DROP FUNCTION IF EXISTS openlines_inbound_handoff();
"""


def _run(sql):
    def run(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(sql)

    return run


class Migration(migrations.Migration):
    dependencies = [("openlines", "0007_message_prune_runs")]

    operations = [migrations.RunPython(_run(CREATE), _run(DROP), elidable=False)]
