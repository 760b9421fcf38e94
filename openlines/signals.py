"""Openlines' reactions to the portal lifecycle: an uninstalled portal's channels stop relaying."""
from django.db.models.signals import post_save
from django.dispatch import receiver

from portals.models import Portal

from .models import Channel


@receiver(post_save, sender=Portal)
def revoke_on_uninstall(sender, instance, **kwargs):
    if instance.status == Portal.Status.UNINSTALLED:
        Channel.objects.filter(portal=instance).exclude(state=Channel.State.REVOKED).update(
            state=Channel.State.REVOKED, secret="", last_error="app uninstalled")
