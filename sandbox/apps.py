from django.apps import AppConfig


class SandboxConfig(AppConfig):
    """The local Bitrix24 sandbox (`manage.py sandbox`). Installed only with DEBUG or B24_SANDBOX on."""

    name = "sandbox"
    verbose_name = "Local Bitrix24 sandbox"
