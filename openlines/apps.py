from django.apps import AppConfig


class OpenlinesConfig(AppConfig):
    name = "openlines"
    verbose_name = "Open Lines channels"

    def ready(self):
        from inbox import handoff
        from inbox import registry as inbox
        from placements import registry as placements
        from portals import install_steps

        from . import checks, events, lifecycle, reconcile, signals, tasks, views  # noqa: F401  (they register themselves)

        install_steps.register("openlines.connectors", lifecycle.register_connectors, order=30)
        # The channel API's messages, queued by the worker's dispatcher where it runs (migration 0008's trigger).
        handoff.register("inbound", handle=tasks.hand_off_inbound, catch_up=tasks.queue_due_inbound)
        for code, handler in events.HANDLERS.items():
            inbox.register(code, handler)
        # An Open Lines connector's settings page (api-reference/widgets/setting-connector.md). Bitrix24 binds it
        # itself when the connector is registered (imconnector.register's PLACEMENT_HANDLER), never placement.bind.
        placements.register(
            placements.Placement(
                code="SETTING_CONNECTOR",
                template="openlines/setting_connector.html",
                bind=False,
                view=views.setting_connector,
            )
        )
