# The release, in this one place (CHANGELOG.md describes each; the image and the manifests are tagged with it).
__version__ = "0.5.0"

# The Celery app is loaded with Django, so @shared_task binds to it (Celery's Django layout).
from .celery import app as celery_app

__all__ = ("__version__", "celery_app")
