"""InboxItem now belongs to the inbox app (inbox/migrations/0001_initial.py): removed from portals' state
only; the table and its rows stay where they are."""
from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ("portals", "0005_inbox"),
        ("inbox", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="InboxItem")],
            database_operations=[],
        ),
    ]
