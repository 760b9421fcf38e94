"""`manage.py sandbox`: run the app on SQLite beside a local Bitrix24 sandbox (see sandbox/runner.py)."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from sandbox import runner


class Command(BaseCommand):
    help = (
        "Start the app (runserver, SQLite) together with a local Bitrix24 sandbox: an OAuth server, "
        "a portal's REST API and a Contact Center page to install, open and uninstall the widget. "
        "Only with DEBUG=true or B24_SANDBOX=true."
    )
    requires_system_checks = []  # the app's own process runs them

    def add_arguments(self, parser):
        parser.add_argument("--app-port", type=int, default=8000, help="the app's port (http://localhost:PORT)")
        parser.add_argument(
            "--portal-port",
            type=int,
            default=8124,
            help="the sandbox portal's port (http://127.0.0.1:PORT: its Contact Center and REST)",
        )
        parser.add_argument("--server-port", type=int, default=8125, help="the sandbox OAuth server's port")
        parser.add_argument(
            "--dir",
            default=None,
            help="folder for the portal state, the app's SQLite database and the admin "
            "password (default: .sandbox in the project)",
        )
        parser.add_argument(
            "--reset", action="store_true", help="forget the sandbox portal and the sandbox database, start over"
        )
        parser.add_argument("--noreload", action="store_true", help="run the app without the autoreloader")

    def handle(self, *args, **options):
        if not (settings.DEBUG or getattr(settings, "B24_SANDBOX", False)):
            raise CommandError("The sandbox runs only with DEBUG=true or B24_SANDBOX=true, never in production.")
        try:
            runner.run(
                runner.Options(
                    base_dir=settings.BASE_DIR,
                    client_id=settings.B24_CLIENT_ID,
                    client_secret=settings.B24_CLIENT_SECRET,
                    directory=options["dir"],
                    app_port=options["app_port"],
                    portal_port=options["portal_port"],
                    server_port=options["server_port"],
                    reload=not options["noreload"],
                    reset=options["reset"],
                ),
                out=self.stdout,
            )
        except runner.SandboxError as exc:
            raise CommandError(str(exc)) from None
