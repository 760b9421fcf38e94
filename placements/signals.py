"""Placements' reactions to the portal lifecycle."""
from django.dispatch import receiver

from portals.lifecycle import portal_data_cleaned

from .models import WidgetSettings


@receiver(portal_data_cleaned)
def delete_settings(sender, portal, **kwargs):
    """The user asked Bitrix24 to delete the app's data on uninstall."""
    WidgetSettings.objects.filter(portal=portal).delete()
