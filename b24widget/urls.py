from django.contrib import admin
from django.urls import path, re_path

from inbox import views as inbox_views
from openlines import views as openlines_views
from placements import views as placement_views
from portals import views as portal_views

from . import health, landing, metrics

urlpatterns = [
    path("", landing.landing, name="landing"),
    path("install/", portal_views.install_view, name="install"),
    path("events/", inbox_views.events_view, name="events"),
    path("placement/", placement_views.placement_view, name="placement"),
    path("openlines/connector/", openlines_views.connector_action_view, name="openlines-connector"),
    path("channels/<uuid:channel_id>/messages", openlines_views.channel_messages_view, name="openlines-messages"),
    path("channels/<uuid:channel_id>/", openlines_views.channel_view, name="openlines-channel"),
    re_path(r"^channels/(?P<rest>.*)$", openlines_views.unknown_channel_view),
    path("healthz", health.healthz, name="healthz"),
    path("metrics", metrics.metrics_view, name="metrics"),
    path("admin/", admin.site.urls),
]

handler500 = "b24widget.errors.server_error"
