from django.apps import AppConfig


class B24WidgetConfig(AppConfig):
    """The project package as an app: its system checks, the landing page's and frame pages' static files."""

    name = "b24widget"
    verbose_name = "b24widget"

    def ready(self):
        from . import checks  # noqa: F401  (registers the settings checks)
