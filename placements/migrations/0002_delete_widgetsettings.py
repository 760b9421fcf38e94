# The widget's own settings ("Enable", one Open Line) changed nothing in Bitrix24; the Contact Center square
# now shows the Open Lines channel's overview (openlines/), whose state lives in openlines' Channel rows.
from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ("placements", "0001_initial"),
    ]

    operations = [
        migrations.DeleteModel(name="WidgetSettings"),
    ]
