"""The inbox's table moves here from portals without a database change (state only): the table keeps its
name (`portals_inboxitem`), its indexes and its rows, and the content type (with its permissions) follows.
"""
import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models

import vault.fields


def move_content_type(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    if not ContentType.objects.filter(app_label="inbox", model="inboxitem").exists():
        ContentType.objects.filter(app_label="portals", model="inboxitem").update(app_label="inbox")


def move_content_type_back(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    if not ContentType.objects.filter(app_label="portals", model="inboxitem").exists():
        ContentType.objects.filter(app_label="inbox", model="inboxitem").update(app_label="portals")


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ("contenttypes", "0002_remove_content_type_name"),
        ("portals", "0005_inbox"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="InboxItem",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                        ("member_id", models.CharField(help_text="As the event named it (the portal may not exist yet).", max_length=64)),
                        ("event", models.CharField(help_text="Bitrix24's event code, upper-cased.", max_length=64)),
                        ("event_handler_id", models.CharField(blank=True, max_length=32)),
                        ("data", models.JSONField(blank=True, default=dict)),
                        ("sealed_auth", vault.fields.EncryptedTextField(blank=True, editable=False)),
                        ("ts", models.CharField(blank=True, help_text="The event's `ts` as Bitrix24 sent it.", max_length=32)),
                        ("idempotency_key", models.CharField(editable=False, max_length=64, unique=True)),
                        ("state", models.CharField(choices=[("pending", "pending"), ("processing", "processing"), ("done", "done"), ("rejected", "rejected"), ("failed", "failed")], default="pending", max_length=16)),
                        ("attempts", models.PositiveIntegerField(default=0)),
                        ("received_at", models.DateTimeField(default=django.utils.timezone.now)),
                        ("next_attempt_at", models.DateTimeField(default=django.utils.timezone.now)),
                        ("enqueued_at", models.DateTimeField(blank=True, null=True)),
                        ("lease_owner", models.CharField(blank=True, editable=False, max_length=32)),
                        ("lease_until", models.DateTimeField(blank=True, null=True)),
                        ("finished_at", models.DateTimeField(blank=True, null=True)),
                        ("outcome", models.CharField(blank=True, max_length=255)),
                        ("last_error", models.TextField(blank=True)),
                        ("portal", models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, related_name="inbox", to="portals.portal")),
                    ],
                    options={
                        "db_table": "portals_inboxitem",
                        "ordering": ["-id"],
                        "indexes": [models.Index(fields=["state", "next_attempt_at"], name="inbox_due"), models.Index(fields=["member_id", "state", "id"], name="inbox_portal_order")],
                    },
                ),
            ],
            database_operations=[],
        ),
        migrations.RunPython(move_content_type, move_content_type_back),
    ]
