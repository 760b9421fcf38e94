"""What a stranger and an ordinary user can make a widget open do (issue 12): floods are refused at once
within a bounded budget while verified opens go on; APPLICATION_TOKEN is checked; addresses the OAuth
server reports must be public; nothing logged carries a query string or a token."""

import ipaddress
import json
import logging

import pytest
from django.test import Client

from bitrix24.addresses import is_public, parse_endpoint
from inbox.models import InboxItem
from portals.models import Portal, PortalEvent
from tests.conftest import deliver
from tests.placements.frames import is_widget, open_widget, portal_calls, text

pytestmark = pytest.mark.django_db
K = PortalEvent.Kind


def forged_open(b24, n):
    """A stranger's open: a known member_id, a made-up AUTH_ID."""
    fields = b24.placement_post(user_id="2")
    fields["AUTH_ID"] = f"{n:032x}"
    return fields


@pytest.mark.slow  # over 1.5 s: a flood of forged opens
def test_a_flood_of_forged_opens_is_refused_at_once_within_a_bounded_budget(frame, installed, standin, settings):
    settings.B24_VERIFY_BURST = 5
    settings.B24_VERIFY_PER_MINUTE = 1
    _, b24 = installed
    verified = b24.placement_post(user_id="1")
    assert is_widget(open_widget(frame, verified))  # verified before the flood: cached
    calls, server = portal_calls(b24), len(standin.server_requests)
    answers = [open_widget(frame, forged_open(b24, n)) for n in range(100)]
    statuses = [a.status_code for a in answers]
    # The budget's few verifications were asked (and refused); every other forged open cost nothing.
    assert statuses.count(403) == 4 and statuses.count(429) == 96
    assert len(standin.server_requests) - server == 4 and portal_calls(b24) == calls
    busy = answers[-1]
    assert int(busy["Retry-After"]) >= 1 and "try again in a moment" in text(busy)
    assert busy["Content-Security-Policy"] == f"frame-ancestors http://{b24.domain}"
    # The already verified user is still served, from the cache, during the flood.
    assert is_widget(open_widget(frame, verified))
    # Another portal's budget is its own.
    other = standin.add_portal()
    from tests.conftest import do_install

    do_install(frame, other)
    assert is_widget(open_widget(frame, other.placement_post(user_id="2")))


def test_a_request_never_waits_long_for_a_rate_limit_slot(frame, installed, standin, settings):
    """The portal's REST budget is spent (by a long export, say): an uncached open is refused at once with
    Retry-After instead of sleeping in the request thread."""
    from bitrix24 import limits

    settings.B24_RATE_LIMIT_BURST, settings.B24_RATE_LIMIT_PER_SECOND = 2, 0.1
    portal, b24 = installed
    for _ in range(2):
        limits.reserve(portal.member_id)  # the bucket is full now: the next slot is 10 s away
    calls = portal_calls(b24)
    response = open_widget(frame, b24.placement_post(user_id="2"))
    assert response.status_code == 429 and int(response["Retry-After"]) >= 1
    assert portal_calls(b24) == calls


def test_an_ordinary_user_with_a_wrong_application_token_is_refused(frame, installed):
    portal, b24 = installed
    fields = b24.placement_post(user_id="2")
    fields["APPLICATION_TOKEN"] = "not-the-apps-token"
    response = open_widget(frame, fields)
    assert response.status_code == 403 and "administrator" in text(response)
    assert Portal.objects.get(pk=portal.pk).application_token == b24.application_token


def test_an_administrators_open_brings_a_missed_application_token_up_to_date(frame, installed):
    """ONAPPUPDATE carried a new application_token and was lost: the administrator's next open stores it."""
    portal, b24 = installed
    b24.application_token = "token-after-an-update-we-missed"
    assert open_widget(frame, b24.placement_post(user_id="2")).status_code == 403  # users wait for an admin
    assert is_widget(open_widget(frame, b24.placement_post(user_id="1")))
    stored = Portal.objects.get(pk=portal.pk)
    assert stored.application_token == "token-after-an-update-we-missed"
    assert stored.events.filter(kind=K.APPLICATION_TOKEN_SAVED, detail__via="administrator_open").exists()
    assert is_widget(open_widget(frame, b24.placement_post(user_id="2")))


def test_a_cached_verdict_does_not_outlive_an_admin_role_for_a_save(frame, installed):
    """The open is cached for minutes; the save asks Bitrix24 again (tests/placements/test_settings_save.py
    has the full story): here, only that the open itself keeps no verdict longer than the setting."""
    _, b24 = installed
    fields = b24.placement_post()
    fields["AUTH_EXPIRES"] = "86400"
    assert is_widget(open_widget(frame, fields))
    assert len(_cache_keys(":verdict:")) == 1


def _cache_keys(part: str) -> list[str]:
    """The default cache's keys holding `part`: the run's own keys on Redis (CACHE_URL), or local memory's."""
    from django.core.cache import caches
    from django.core.cache.backends.redis import RedisCache

    backend = caches["default"]  # the backend itself (`cache` is a proxy to it)
    if isinstance(backend, RedisCache):
        client = backend._cache.get_client(write=False)
        return [k.decode() for k in client.scan_iter(match=f"{backend.key_prefix}*{part}*")]
    return [k for k in backend._cache if part in k]  # type: ignore[attr-defined]


# --- addresses the OAuth server reports (what parse_grant takes of them: tests/bitrix24/test_oauth.py) -----


@pytest.mark.parametrize(
    "address, public",
    [
        ("8.8.8.8", True),
        ("127.0.0.1", False),
        ("2606:4700::1111", True),
        ("::1", False),
        ("::", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:8.8.8.8", True),  # IPv4-mapped
        ("64:ff9b::7f00:1", False),
        ("64:ff9b::a00:5", False),
        ("64:ff9b::808:808", True),  # NAT64 (RFC 6052)
        ("64:ff9b:1::1", False),
        ("64:ff9b:1::808:808", False),  # NAT64 local use (RFC 8215): refused outright
        ("2002:7f00:1::", False),
        ("2002:c0a8:101::", False),
        ("2002:808:808::", True),  # 6to4
        ("::7f00:1", False),
        ("::a9fe:a9fe", False),
        ("::808:808", True),  # IPv4-compatible (deprecated)
        ("2001:0::1", False),
        ("2001::808:808", False),  # Teredo: refused outright
        ("::ffff:0:7f00:1", False),
        ("::ffff:0:808:808", True),  # IPv4-translated (SIIT, RFC 2765)
        ("fec0::1", False),  # site-local (deprecated, RFC 3879)
    ],
)
def test_an_ipv6_address_that_carries_an_ipv4_one_is_judged_by_it(address, public):
    """Python 3.11's `is_global` counts 64:ff9b::7f00:1, 2002:7f00:1:: and ::7f00:1 (all 127.0.0.1) as
    global; the address check (portal hosts and webhooks alike) reads the IPv4 address inside."""
    assert is_public(ipaddress.ip_address(address)) is public


@pytest.mark.parametrize(
    "address",
    [
        "224.0.0.1",
        "239.255.255.250",
        "233.252.0.1",
        "ff02::1",
        "ff0e::101",
        "::ffff:224.0.0.1",
        "2002:e000:1::",
        "64:ff9b::e000:1",
        "0.0.0.0",
        "::",
        "240.0.0.1",
        "255.255.255.255",
    ],
)
def test_multicast_reserved_and_unspecified_addresses_are_not_public(address):
    """Python 3.11's `is_global` says True for multicast (224.0.0.0/4, ff00::/8): a group, never one server,
    so neither a portal's host nor a webhook may be one; reserved and unspecified neither."""
    assert is_public(ipaddress.ip_address(address)) is False
    assert is_public(ipaddress.ip_address("8.8.8.8")) and is_public(ipaddress.ip_address("2001:4860::8888"))


def test_a_public_client_endpoint_is_accepted(settings):
    settings.B24_ALLOW_HTTP_PORTALS = False
    assert parse_endpoint("https://Portal.Bitrix24.DE/rest/") == (
        "https://portal.bitrix24.de/rest/",
        "portal.bitrix24.de",
    )


# --- logs ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("log_format", ["json", "plain"])
def test_no_log_line_carries_a_query_string_or_a_token(frame, installed, settings, log_format):
    """Through the project's own LOGGING (its handler, filter and formatter), as a deployment logs."""
    import io
    from logging.config import dictConfig

    _, b24 = installed
    fields = b24.placement_post(user_id="2")
    query = f"?DOMAIN={fields['DOMAIN']}&AUTH_ID={fields['AUTH_ID']}&APPLICATION_TOKEN={fields['APPLICATION_TOKEN']}"
    config = json.loads(json.dumps(settings.LOGGING))
    config["handlers"]["console"]["formatter"] = log_format
    config["root"]["level"] = "DEBUG"
    stream = io.StringIO()
    dictConfig(config)
    handler = logging.getLogger().handlers[0]
    handler.setStream(stream)
    try:
        frame.post("/placement/" + query, {"member_id": "bad member!"})  # a 400, logged by Django
        frame.post("/placement/" + query, dict(fields, AUTH_ID="f" * 32))  # a 403
    finally:
        dictConfig(settings.LOGGING)
    text_ = stream.getvalue()
    assert "Bad Request: /placement/" in text_ and "Forbidden: /placement/" in text_
    for secret in (fields["AUTH_ID"], fields["APPLICATION_TOKEN"], fields["REFRESH_ID"], "AUTH_ID=", "?DOMAIN"):
        assert secret not in text_


def test_strangers_without_our_application_token_cannot_use_up_the_genuine_budget(frame, installed, standin, settings):
    """A stranger does not know the APPLICATION_TOKEN every genuine placement POST carries: his forged
    opens spend a budget of their own, and a genuine new user is still verified."""
    settings.B24_VERIFY_UNMATCHED_BURST, settings.B24_VERIFY_UNMATCHED_PER_MINUTE = 3, 1
    settings.B24_VERIFY_BURST, settings.B24_VERIFY_PER_MINUTE = 3, 1
    _, b24 = installed
    asked = len(standin.server_requests)
    statuses = []
    for n in range(50):
        fields = forged_open(b24, n)
        fields["APPLICATION_TOKEN"] = f"guess{n}"
        statuses.append(open_widget(frame, fields).status_code)
    assert statuses.count(403) == 3 and statuses.count(429) == 47
    assert len(standin.server_requests) - asked == 3
    assert is_widget(open_widget(frame, b24.placement_post(user_id="2")))  # genuine, uncached: verified


# --- a second application installed on the same portal -------------------------------------------------


@pytest.fixture
def other_id(other_app):
    """The second app's client_id; its portal app.info CODE is *our* client_id meanwhile, so only the OAuth
    server's client_id tells the two apps apart."""
    original, other_app.code = other_app.code, "local.test.app"
    yield other_app.client_id
    other_app.code = original


def test_a_genuine_token_of_another_app_opens_nothing(frame, installed, other_id, standin):
    _, b24 = installed
    fields = b24.placement_post(user_id="1")
    tokens = b24.issue_tokens("1", client_id=other_id)
    fields.update(AUTH_ID=tokens["access_token"], REFRESH_ID=tokens["refresh_token"])
    response = open_widget(frame, fields)
    assert response.status_code == 403 and "Access denied" in text(response)


def test_a_genuine_install_post_of_another_app_installs_nothing(client, installed, other_id):
    portal, b24 = installed
    before = Portal.objects.filter(pk=portal.pk).values().get()
    post = b24.install_post()
    tokens = b24.issue_tokens("1", client_id=other_id)
    post.update(AUTH_ID=tokens["access_token"], REFRESH_ID=tokens["refresh_token"], APPLICATION_TOKEN="other")
    assert client.post("/install/", post).status_code == 403
    assert Portal.objects.filter(pk=portal.pk).values().get() == before


def test_an_onappinstall_with_another_apps_tokens_plants_nothing(client, installed, other_id):
    portal, b24 = installed
    before = Portal.objects.filter(pk=portal.pk).values().get()
    payload = b24.event_payload("ONAPPINSTALL", client_id=other_id, application_token="other-app-token")
    response, item = deliver(client, payload)  # stored at once; its proof fails where it is processed
    assert response.status_code == 200 and item.state == InboxItem.State.REJECTED
    assert "not an administrator's" in item.last_error
    assert Portal.objects.filter(pk=portal.pk).values().get() == before


def test_a_market_apps_code_is_not_its_client_id_and_that_is_fine(frame, installed, standin):
    """app.info's CODE (e.g. vendor.app) is not the client_id; the OAuth server's client_id decides."""
    _, b24 = installed
    original = standin.app.code
    standin.app.code = "vendor.widget"
    try:
        assert is_widget(open_widget(frame, b24.placement_post(user_id="2")))
    finally:
        standin.app.code = original


def test_an_ordinary_users_forged_opens_spend_his_own_share_not_his_colleagues(installed, standin, settings):
    """An ordinary user holds the real APPLICATION_TOKEN (every user's frame does): his forged opens spend the
    budget of his own address, and a colleague's genuine open (another address, an uncached token) is still
    verified. The portal's ceiling bounds all senders together."""
    settings.B24_VERIFY_BURST, settings.B24_VERIFY_PER_MINUTE = 3, 1
    settings.B24_VERIFY_PORTAL_BURST, settings.B24_VERIFY_PORTAL_PER_MINUTE = 6, 1
    _, b24 = installed
    insider = Client(enforce_csrf_checks=True, REMOTE_ADDR="10.0.0.7")
    asked = len(standin.server_requests)
    statuses = [open_widget(insider, forged_open(b24, n)).status_code for n in range(30)]  # our token, made-up AUTH_ID
    assert statuses.count(403) == 3 and statuses.count(429) == 27
    assert len(standin.server_requests) - asked == 3
    colleague = Client(enforce_csrf_checks=True, REMOTE_ADDR="10.0.0.8")
    assert is_widget(open_widget(colleague, b24.placement_post(user_id="2")))  # genuine, uncached: verified
    # Many addresses together stop at the portal's ceiling (6 in all: 3 + 1 + 2 more).
    others = [
        open_widget(Client(enforce_csrf_checks=True, REMOTE_ADDR=f"10.0.1.{n}"), forged_open(b24, 100 + n)).status_code
        for n in range(5)
    ]
    assert others == [403, 403, 429, 429, 429]
