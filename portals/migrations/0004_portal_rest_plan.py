"""Portal.rest_plan: the request-rate bucket of the portal's plan, filled from an already stored LICENSE."""
from django.db import migrations, models


def plans_from_licences(apps, schema_editor):
    Portal = apps.get_model("portals", "Portal")
    # Enterprise plans are "<region>_ent..." (api-reference/common/system/app-info.md); the rest keep the default.
    Portal.objects.filter(license__iregex=r"^([a-z]+_)?ent").update(rest_plan="enterprise")


class Migration(migrations.Migration):

    dependencies = [
        ("portals", "0003_leases_bindings_rejections"),
    ]

    operations = [
        migrations.AddField(
            model_name="portal",
            name="rest_plan",
            field=models.CharField(choices=[("standard", "standard (50, then 2/s)"),
                                            ("enterprise", "Enterprise (250, then 5/s)")],
                                   default="standard", max_length=16),
        ),
        migrations.RunPython(plans_from_licences, migrations.RunPython.noop),
    ]
