from django.apps import AppConfig


class PortalsConfig(AppConfig):
    name = "portals"
    verbose_name = "Bitrix24 portals"

    def ready(self):
        from . import events

        events.register()  # the app events go through the inbox like every other bound event
