"""Openlines' reactions to the portal lifecycle: an uninstalled portal's channels stop relaying; a portal
whose user asked Bitrix24 to delete the app's data (ONAPPUNINSTALL CLEAN=1) loses its channels and their
messages."""

from django.db.models.signals import post_save
from django.dispatch import receiver

from portals.lifecycle import portal_data_cleaned
from portals.models import Portal

from .models import Channel


@receiver(post_save, sender=Portal)
def revoke_on_uninstall(sender, instance, **kwargs):
    if instance.status == Portal.Status.UNINSTALLED:
        Channel.objects.filter(portal=instance).exclude(state=Channel.State.REVOKED).update(
            state=Channel.State.REVOKED, secret="", last_error="app uninstalled"
        )


@receiver(portal_data_cleaned)
def delete_channels(sender, portal, **kwargs):
    """CLEAN=1: the channels go, with the messages and deliveries they relayed (cascade)."""
    Channel.objects.filter(portal=portal).delete()
