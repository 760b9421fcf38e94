from django.apps import AppConfig


class InboxConfig(AppConfig):
    name = "inbox"
    verbose_name = "Bitrix24 events"

    def ready(self):
        from . import offline

        offline.register()  # ONOFFLINEEVENT wakes a pull of the portal's offline queue
