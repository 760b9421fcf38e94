from django.apps import AppConfig


class InboxConfig(AppConfig):
    name = "inbox"
    verbose_name = "Bitrix24 events"

    def ready(self):
        from . import handoff, offline, queue

        offline.register()  # ONOFFLINEEVENT wakes a pull of the portal's offline queue
        # `/events/`' rows, released by the worker's dispatcher where it runs (migration 0004's trigger).
        handoff.register("inbox", handle=queue.hand_off, catch_up=queue.release_held)
