from django.apps import AppConfig


class PortalsConfig(AppConfig):
    name = "portals"
    verbose_name = "Bitrix24 portals"

    def ready(self):
        from vault import spool

        from . import app_events, install, install_steps, tokens

        app_events.register()  # the app events go through the inbox like every other bound event
        install_steps.register("portals.app_events", install.bind_app_events, order=20)
        spool.register(tokens.HELD)  # rotated tokens held during a database outage: rotated with the keys
