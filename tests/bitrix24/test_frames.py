"""bitrix24/frames.py: the frame POST Bitrix24 sends into an app's iframe, parsed field by field.

Each field is read from the body first, then from the URL query (where a real portal puts DOMAIN,
PROTOCOL, LANG and APP_SID). BadFramePost names the first field that is missing or malformed. The view
that answers a refusal with a page is tested in tests/placements/test_request.py; here is the parser only.
"""

from urllib.parse import urlencode

import pytest
from django.http import HttpResponse
from django.test import RequestFactory

from bitrix24 import frames
from bitrix24.frames import BadFramePost, FramePost, parse_frame_post
from tests.placements.frames import with_fields

GOOD = {
    "DOMAIN": "Example.Bitrix24.com",
    "PROTOCOL": "1",
    "LANG": "DE",
    "APP_SID": "sid.1-2_3",
    "member_id": "0123456789abcdef0123456789abcdef",
    "PLACEMENT": "CONTACT_CENTER",
    "AUTH_ID": "auth-token",
    "AUTH_EXPIRES": "3600",
    "REFRESH_ID": "refresh-token",
    "APPLICATION_TOKEN": "app-token",
    "status": "P",
    "PLACEMENT_OPTIONS": '{"ID": "7", "URI": "/contact_center/"}',
}
OPTIONAL = ("APP_SID", "AUTH_ID", "AUTH_EXPIRES", "REFRESH_ID", "APPLICATION_TOKEN", "status", "PLACEMENT_OPTIONS")
# field -> the most characters it may have
LIMITS = {
    "DOMAIN": 255,
    "PROTOCOL": 1,
    "LANG": 8,
    "member_id": 64,
    "PLACEMENT": 64,
    "APP_SID": 128,
    "AUTH_ID": frames.MAX_TOKEN,
    "REFRESH_ID": frames.MAX_TOKEN,
    "APPLICATION_TOKEN": 255,
    "AUTH_EXPIRES": 10,
    "status": 1,
    "PLACEMENT_OPTIONS": frames.MAX_OPTIONS,
}


def post(body=None, query=None, **changes):
    """A frame POST of GOOD's fields; `changes` replace fields (None: the field is left out)."""
    fields = with_fields(GOOD if body is None else body, **changes)
    path = f"/placement/?{urlencode(query)}" if query else "/placement/"
    return RequestFactory().post(path, fields)


def refused_field(request, **kwargs) -> str:
    with pytest.raises(BadFramePost) as info:
        parse_frame_post(request, **kwargs)
    assert str(info.value).startswith(f"{info.value.field}: ")
    return info.value.field


def test_a_good_post_is_parsed_into_its_fields():
    parsed = parse_frame_post(post())
    assert parsed == FramePost(
        domain="example.bitrix24.com",
        protocol=1,
        lang="de",
        member_id=GOOD["member_id"],
        placement="CONTACT_CENTER",
        app_sid="sid.1-2_3",
        auth_id="auth-token",
        auth_expires=3600,
        refresh_id="refresh-token",
        application_token="app-token",
        status="P",
        placement_options={"ID": "7", "URI": "/contact_center/"},
    )
    assert parsed.language == "de"
    assert "auth-token" not in repr(parsed) and "refresh-token" not in repr(parsed) and "app-token" not in repr(parsed)


def test_only_the_required_fields_are_required():
    parsed = parse_frame_post(post(**dict.fromkeys(OPTIONAL)))
    assert (
        parsed.app_sid,
        parsed.auth_id,
        parsed.auth_expires,
        parsed.refresh_id,
        parsed.application_token,
        parsed.status,
        parsed.placement_options,
    ) == ("", "", None, "", "", "", {})


@pytest.mark.parametrize("field", ["DOMAIN", "PROTOCOL", "LANG", "member_id", "PLACEMENT"])
@pytest.mark.parametrize("value", [None, "", "   "])
def test_a_missing_required_field_is_named(field, value):
    assert refused_field(post(**{field: value})) == field


def test_placement_may_be_optional():
    """The install POST has no placement to name (require_placement=False)."""
    assert parse_frame_post(post(PLACEMENT=None), require_placement=False).placement == ""
    assert refused_field(post(PLACEMENT="contact_center"), require_placement=False) == "PLACEMENT"


@pytest.mark.parametrize("field", list(LIMITS))
def test_a_field_one_character_too_long_is_named(field):
    assert refused_field(post(**{field: "1" * (LIMITS[field] + 1)})) == field


def test_the_length_limit_counts_before_the_spaces_are_stripped():
    assert parse_frame_post(post(LANG="  en  ")).lang == "en"  # 6 characters
    assert refused_field(post(LANG="   en    ")) == "LANG"  # 9


@pytest.mark.parametrize(
    "field,value",
    [
        ("DOMAIN", "not a domain"),
        ("DOMAIN", "evil.example/path"),
        ("DOMAIN", "https://evil.example"),
        ("DOMAIN", "evil.example:99999"),
        ("DOMAIN", "evil.example:0"),
        ("DOMAIN", "-x.example"),
        ("DOMAIN", "é.example"),
        ("PROTOCOL", "2"),
        ("PROTOCOL", "x"),
        ("PROTOCOL", "¹"),
        ("LANG", "english"),
        ("LANG", "e1"),
        ("LANG", "e"),
        ("LANG", "en_"),
        ("LANG", "en-12"),
        ("LANG", "ру"),
        ("member_id", "a b"),
        ("member_id", "<script>"),
        ("member_id", "m²"),
        ("member_id", "m1;drop"),
        ("PLACEMENT", "contact_center"),
        ("PLACEMENT", "1ST"),
        ("PLACEMENT", "CRM-TAB"),
        ("PLACEMENT", "CRM TAB"),
        ("APP_SID", "a/b"),
        ("APP_SID", "a b"),
        ("AUTH_ID", "not a token!"),
        ("AUTH_ID", "tök"),
        ("REFRESH_ID", "x y"),
        ("REFRESH_ID", "a+b="),
        ("APPLICATION_TOKEN", "a b"),
        ("APPLICATION_TOKEN", "<x>"),
        ("AUTH_EXPIRES", "3600s"),
        ("AUTH_EXPIRES", "-1"),
        ("AUTH_EXPIRES", "1.5"),
        ("AUTH_EXPIRES", "²"),
        ("AUTH_EXPIRES", "٣٦٠٠"),
        ("AUTH_EXPIRES", "１"),
        ("status", "X"),
        ("status", "f"),
        ("status", "?"),
        ("PLACEMENT_OPTIONS", "{not json"),
        ("PLACEMENT_OPTIONS", "{'ID': 1}"),
        ("PLACEMENT_OPTIONS", "[" * 10_000),
    ],
)
def test_a_malformed_field_is_named(field, value):
    assert refused_field(post(**{field: value})) == field


def test_the_first_bad_field_is_the_one_named():
    """In the order Bitrix24's fields are read: DOMAIN, PROTOCOL, LANG, member_id, PLACEMENT, then the rest."""
    assert refused_field(post(DOMAIN="x y", LANG="x", member_id="a b")) == "DOMAIN"
    assert refused_field(post(LANG="x", member_id="a b")) == "LANG"
    assert refused_field(post(member_id="a b", status="X")) == "member_id"


@pytest.mark.parametrize("allowed,ok", [(True, True), (False, False)])
def test_plain_http_portals_only_where_the_deployment_allows(settings, allowed, ok):
    settings.B24_ALLOW_HTTP_PORTALS = allowed
    if ok:
        assert parse_frame_post(post(PROTOCOL="0", DOMAIN="127.0.0.1:8123")).protocol == 0
    else:
        assert refused_field(post(PROTOCOL="0")) == "PROTOCOL"
        assert refused_field(post(DOMAIN="example.bitrix24.com:8123")) == "DOMAIN"


def test_the_https_port_is_the_same_domain():
    assert parse_frame_post(post(DOMAIN="example.bitrix24.com:443")).domain == "example.bitrix24.com"


@pytest.mark.parametrize(
    "raw,options",
    [
        ("", {}),
        ("undefined", {}),
        ("null", {}),
        ("[]", {}),
        ("[1, 2]", {}),
        ('"text"', {}),
        ("42", {}),
        ("true", {}),
        ('{"ID": "7"}', {"ID": "7"}),
        (' {"A": {"B": [1]}} ', {"A": {"B": [1]}}),
    ],
)
def test_placement_options_that_are_no_object_carry_none(raw, options):
    assert parse_frame_post(post(PLACEMENT_OPTIONS=raw)).placement_options == options


@pytest.mark.parametrize(
    "lang,language",
    [
        ("en", "en"),
        ("ru", "ru"),
        ("ua", "ru"),
        ("kz", "ru"),
        ("de", "de"),
        ("la", "en"),
        ("br", "en"),
        ("DE", "de"),
        ("de_CH", "de"),
    ],
)
def test_the_portal_language_maps_to_one_of_ours(lang, language):
    assert parse_frame_post(post(LANG=lang)).language == language


# --- the query-string fallback ------------------------------------------------------------------------

QUERY_FIELDS = ("DOMAIN", "PROTOCOL", "LANG", "APP_SID")


def test_what_a_real_portal_puts_in_the_query_is_read_from_there():
    query = {name: GOOD[name] for name in QUERY_FIELDS}
    body = {name: value for name, value in GOOD.items() if name not in QUERY_FIELDS}
    assert parse_frame_post(post(body, query)) == parse_frame_post(post())


@pytest.mark.parametrize("field", list(GOOD))
def test_every_field_falls_back_to_the_query(field):
    query = {field: GOOD[field]}
    assert parse_frame_post(post(query=query, **{field: None})) == parse_frame_post(post())


def test_the_body_wins_over_the_query():
    parsed = parse_frame_post(post(query={"DOMAIN": "evil.example", "LANG": "ru", "member_id": "other"}))
    assert (parsed.domain, parsed.lang, parsed.member_id) == ("example.bitrix24.com", "de", GOOD["member_id"])


def test_an_empty_field_in_the_body_does_not_fall_back_to_the_query():
    """Present but empty in the body is what the sender said: the query does not fill it in."""
    assert refused_field(post(query={"DOMAIN": "example.bitrix24.com"}, DOMAIN="")) == "DOMAIN"


def test_a_bad_field_in_the_query_is_named_like_one_in_the_body():
    assert refused_field(post(query={"LANG": "english"}, LANG=None)) == "LANG"
    assert refused_field(post(query={"APP_SID": "a" * 129}, APP_SID=None)) == "APP_SID"


def test_language_of_a_refused_post():
    factory = RequestFactory()
    assert frames.language_of(factory.post("/placement/", {"LANG": "ru"})) == "ru"
    assert frames.language_of(factory.post("/placement/?LANG=de", {})) == "de"
    assert frames.language_of(factory.post("/placement/", {"LANG": "<script>"})) == "en"
    assert frames.language_of(factory.post("/placement/", {})) == "en"


# --- who may frame the answer -------------------------------------------------------------------------


def test_framed_by_one_origin_or_nobody():
    framed = frames.framed_by(HttpResponse(), "https://example.bitrix24.com")
    assert framed["Content-Security-Policy"] == "frame-ancestors https://example.bitrix24.com"
    assert framed.xframe_options_exempt is True and "no-store" in framed["Cache-Control"]
    closed = frames.framed_by(HttpResponse(), None)
    assert closed["Content-Security-Policy"] == "frame-ancestors 'none'"
    assert not getattr(closed, "xframe_options_exempt", False) and "no-store" in closed["Cache-Control"]


@pytest.mark.parametrize(
    "allowed,protocol,origin",
    [
        (True, 0, "http://p.example:8123"),
        (True, 1, "https://p.example:8123"),
        (True, None, "https://p.example:8123"),
        (False, 0, "https://p.example:8123"),
    ],
)
def test_frame_origin(settings, allowed, protocol, origin):
    settings.B24_ALLOW_HTTP_PORTALS = allowed
    assert frames.frame_origin("p.example:8123", protocol) == origin
