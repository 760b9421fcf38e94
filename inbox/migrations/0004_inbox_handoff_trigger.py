"""PostgreSQL only: each committed pending event announces its row to the hand-off dispatcher
(inbox/handoff.py: NOTIFY b24widget_handoff, 'inbox:<row pk>'). Other databases hand off in the request."""

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION inbox_handoff() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('b24widget_handoff', 'inbox:' || NEW.id);
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS inbox_handoff ON portals_inboxitem;
CREATE TRIGGER inbox_handoff AFTER INSERT ON portals_inboxitem
    FOR EACH ROW WHEN (NEW.state = 'pending') EXECUTE FUNCTION inbox_handoff();
"""
DROP = """
DROP TRIGGER IF EXISTS inbox_handoff ON portals_inboxitem;
DROP FUNCTION IF EXISTS inbox_handoff();
"""


def _run(sql):
    def run(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(sql)

    return run


class Migration(migrations.Migration):
    dependencies = [("inbox", "0003_lanes_fairness_retention")]

    operations = [migrations.RunPython(_run(CREATE), _run(DROP), elidable=False)]
