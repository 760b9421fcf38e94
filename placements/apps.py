from django.apps import AppConfig


class PlacementsConfig(AppConfig):
    name = "placements"
    verbose_name = "Widget placements"

    def ready(self):
        from . import signals  # noqa: F401  (connects to portals' lifecycle signals)
