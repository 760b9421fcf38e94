from django.apps import AppConfig


class PlacementsConfig(AppConfig):
    name = "placements"
    verbose_name = "Widget placements"

    def ready(self):
        from portals import install_steps

        from . import registry

        install_steps.register("placements", registry.bind_placements, order=10)
