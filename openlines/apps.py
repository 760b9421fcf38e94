from django.apps import AppConfig


class OpenlinesConfig(AppConfig):
    name = "openlines"
    verbose_name = "Open Lines channels"

    def ready(self):
        from portals import install_steps

        from . import checks, lifecycle, signals  # noqa: F401  (checks and signals register themselves)

        install_steps.register("openlines.connectors", lifecycle.register_connectors)
        lifecycle.register_event_handlers()
