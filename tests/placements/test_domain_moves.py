"""Portals get renamed: the new address is adopted only when the OAuth server confirms it, the posted
DOMAIN is never contacted, and re-checks caused by a posted DOMAIN are throttled."""

import pytest

from portals.models import Portal, PortalEvent
from tests.placements.frames import is_widget, open_widget, portal_calls, text

pytestmark = pytest.mark.django_db

K = PortalEvent.Kind


def moves(portal):
    return list(portal.events.filter(kind=K.DOMAIN_CHANGED).order_by("id").values_list("detail", flat=True))


def test_an_open_from_the_new_address_is_adopted(frame, installed, standin):
    portal, b24 = installed
    old = b24.domain
    new = b24.rename()
    oauth_before = len(standin.oauth_requests)

    response = open_widget(frame, b24.placement_post(), shape="real")

    assert is_widget(response)
    assert response["Content-Security-Policy"] == f"frame-ancestors http://{new}"
    portal.refresh_from_db()
    assert portal.domain == new and portal.client_endpoint == f"http://{new}/rest/"
    assert moves(portal) == [{"old": old, "new": new}]
    # Learned from the OAuth server's app.info for the user's own token: no token was refreshed for it.
    assert len(standin.oauth_requests) == oauth_before
    assert standin.server_requests[-1]["method"] == "app.info"
    assert b24.requests[-1]["address"] == new  # the user was verified at the confirmed address

    # From now on the new address is simply the stored one.
    again = open_widget(frame, b24.placement_post())
    assert is_widget(again) and len(standin.oauth_requests) == oauth_before


def test_an_open_from_the_old_address_right_after_the_rename(frame_500, installed, standin):
    portal, b24 = installed
    old = b24.domain
    new = b24.rename()
    fields = b24.placement_post()
    fields["DOMAIN"] = old  # a tab still showing the portal at its old address

    response = open_widget(frame_500, fields)

    assert response.status_code == 403
    assert "Unknown portal address" in text(response)
    assert "open the widget again" in text(response)
    assert old not in response.get("Content-Security-Policy", "")
    assert response["Content-Security-Policy"] == f"frame-ancestors http://{new}"
    # The stored address learned the truth on the way (the old address answered 302).
    portal.refresh_from_db()
    assert portal.domain == new and moves(portal) == [{"old": old, "new": new}]

    # Opening again from the old address: the same answer, still no 5xx.
    again = open_widget(frame_500, dict(b24.placement_post(), DOMAIN=old))
    assert again.status_code == 403 and "Unknown portal address" in text(again)
    # ... and from the new one, the widget.
    assert is_widget(open_widget(frame_500, b24.placement_post()))


def test_twenty_foreign_domains_refresh_nothing_and_reach_nobody(frame, installed, standin, settings):
    settings.B24_VERIFY_BURST = 30  # each costs one question to the OAuth server, within the portal's budget
    portal, b24 = installed
    recorders = [standin.add_recorder() for _ in range(20)]
    oauth_before, asked = len(standin.oauth_requests), len(standin.server_requests)

    for recorder in recorders:
        fields = dict(b24.placement_post(), DOMAIN=recorder.address)
        response = open_widget(frame, fields)
        assert response.status_code == 403, response.status_code
        assert "Unknown portal address" in text(response)

    assert len(standin.oauth_requests) == oauth_before and len(standin.server_requests) - asked == 20
    assert all(recorder.requests == [] for recorder in recorders)
    portal.refresh_from_db()
    assert portal.domain == b24.domain and portal.status == Portal.Status.ACTIVE and moves(portal) == []
    # The portal itself is not hurt.
    assert is_widget(open_widget(frame, b24.placement_post()))


def test_a_redirect_the_oauth_server_does_not_explain_is_never_followed(frame_500, installed, standin):
    portal, b24 = installed
    recorder = standin.add_recorder()
    b24.redirect_to(recorder.address)

    response = open_widget(frame_500, b24.placement_post())

    assert response.status_code == 502
    assert "Bitrix24 error" in text(response)
    assert recorder.requests == []
    portal.refresh_from_db()
    assert portal.domain == b24.domain and moves(portal) == []
    assert "frame-ancestors http://" + recorder.address not in response["Content-Security-Policy"]

    b24.redirect_to(None)
    assert is_widget(open_widget(frame_500, b24.placement_post()))


def test_renamed_twice_within_the_recheck_interval(frame, installed):
    portal, b24 = installed
    first = b24.rename()
    assert is_widget(open_widget(frame, b24.placement_post()))
    second = b24.rename()  # the posted-DOMAIN re-check is still throttled

    response = open_widget(frame, b24.placement_post())

    assert is_widget(response)
    assert response["Content-Security-Policy"] == f"frame-ancestors http://{second}"
    portal.refresh_from_db()
    assert portal.domain == second
    assert [m["new"] for m in moves(portal)] == [first, second]


def test_a_foreign_domain_cannot_lock_out_a_real_rename(frame, installed, standin):
    portal, b24 = installed
    recorder = standin.add_recorder()
    assert open_widget(frame, dict(b24.placement_post(), DOMAIN=recorder.address)).status_code == 403
    new = b24.rename()  # the throttle was spent by the forged open above

    response = open_widget(frame, b24.placement_post())

    assert is_widget(response)
    portal.refresh_from_db()
    assert portal.domain == new and recorder.requests == []


def test_a_rename_while_the_oauth_server_is_down(frame_500, installed, standin):
    portal, b24 = installed
    old = b24.domain
    new = b24.rename()
    standin.oauth_down = True
    response = open_widget(frame_500, b24.placement_post())
    assert response.status_code == 502 and "Bitrix24 is not reachable" in text(response)
    portal.refresh_from_db()
    assert portal.domain == old

    standin.oauth_down = False  # back, while the re-check is still throttled
    assert is_widget(open_widget(frame_500, b24.placement_post()))
    portal.refresh_from_db()
    assert portal.domain == new


def test_a_foreign_domain_for_a_portal_that_lost_the_app(frame, installed, standin):
    portal, b24 = installed
    recorder = standin.add_recorder()
    b24.block("NOT_INSTALLED")  # the OAuth server refuses the portal's tokens from now on
    response = open_widget(frame, dict(b24.placement_post(), DOMAIN=recorder.address))
    assert response.status_code == 403 and "Access denied" in text(response)
    assert recorder.requests == []
    # A forged open changes nothing stored; the app notices the loss at its own next refresh.
    portal.refresh_from_db()
    assert portal.status == Portal.Status.ACTIVE and portal.domain == b24.domain


def test_calls_after_a_rename_go_to_the_new_address_only(frame, installed):
    _, b24 = installed
    old = b24.domain
    new = b24.rename()
    assert is_widget(open_widget(frame, b24.placement_post()))
    start = portal_calls(b24)
    assert is_widget(open_widget(frame, b24.placement_post()))
    assert {r["address"] for r in b24.requests[start:]} == {new}
    assert old != new
