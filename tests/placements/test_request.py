"""POST /placement/: one entry point, fields parsed from the body and the URL query, bad input refused.

A malformed open gets a readable 4xx page in the user's language, costs no database query and no
call to Bitrix24, and changes nothing stored.
"""

from urllib.parse import urlencode

import pytest

from sandbox.standin import frame_query_and_body
from tests.placements.frames import SHAPES, is_widget, open_widget, portal_calls, text, with_fields

pytestmark = pytest.mark.django_db

BAD_FIELDS = [
    # required fields, missing or malformed
    ("DOMAIN", None),
    ("DOMAIN", ""),
    ("DOMAIN", "not a domain"),
    ("DOMAIN", "a" * 256),
    ("DOMAIN", "evil.example/path"),
    ("DOMAIN", "https://evil.example"),
    ("DOMAIN", "evil.example:99999"),
    ("PROTOCOL", None),
    ("PROTOCOL", "2"),
    ("PROTOCOL", "10"),
    ("PROTOCOL", "https"),
    ("LANG", None),
    ("LANG", "english"),
    ("LANG", "e1"),
    ("member_id", None),
    ("member_id", "a b"),
    ("member_id", "x" * 65),
    ("member_id", "<script>"),
    ("PLACEMENT", None),
    ("PLACEMENT", ""),
    ("PLACEMENT", "contact_center"),
    ("PLACEMENT", "X" * 65),
    # optional fields: absent is fine, malformed is not
    ("AUTH_ID", "not a token!"),
    ("AUTH_ID", "a" * 1025),
    ("REFRESH_ID", "x y"),
    ("REFRESH_ID", "r" * 1025),
    ("AUTH_EXPIRES", "3600s"),
    ("AUTH_EXPIRES", "-1"),
    ("AUTH_EXPIRES", "1.5"),
    ("AUTH_EXPIRES", "1" * 11),
    ("APP_SID", "a/b"),
    ("APP_SID", "a" * 129),
    ("status", "X"),
    ("status", "FF"),
    ("status", "f"),
    ("PLACEMENT_OPTIONS", "{not json"),
    ("PLACEMENT_OPTIONS", "{'ID': 1}"),
    ("PLACEMENT_OPTIONS", '{"ID": "' + "x" * (16 * 1024) + '"}'),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("field,value", BAD_FIELDS, ids=lambda v: v if v is None or len(str(v)) < 20 else "long")
def test_malformed_open_is_a_400_that_touches_nothing(
    frame, installed, stored_state, standin, shape, field, value, django_assert_num_queries
):
    _, b24 = installed
    fields = with_fields(b24.placement_post(), **{field: value})
    before, calls, oauth = stored_state(), portal_calls(b24), len(standin.oauth_requests)

    with django_assert_num_queries(0):
        response = open_widget(frame, fields, shape=shape)

    assert response.status_code == 400
    page = text(response)
    assert "Bad request" in page and f"malformed ({field})" in page
    assert 'id="openlines-overview"' not in page
    assert stored_state() == before
    assert portal_calls(b24) == calls and len(standin.oauth_requests) == oauth


@pytest.mark.parametrize("shape", SHAPES)
def test_unknown_placement_is_a_clear_400(frame, installed, stored_state, shape, django_assert_num_queries):
    _, b24 = installed
    fields = b24.placement_post(placement="CRM_DEAL_DETAIL_TAB", options={"ID": "3443"})
    before, calls = stored_state(), portal_calls(b24)
    with django_assert_num_queries(0):
        response = open_widget(frame, fields, shape=shape)
    assert response.status_code == 400
    assert "Unknown placement" in text(response)
    assert "This app has no handler for that placement." in text(response)
    assert stored_state() == before and portal_calls(b24) == calls


@pytest.mark.parametrize("shape", SHAPES)
def test_both_shapes_open_the_widget(frame, installed, shape):
    _, b24 = installed
    response = open_widget(frame, b24.placement_post(lang="de"), shape=shape)
    assert is_widget(response)
    assert "Angemeldet als" in text(response)  # LANG was read, wherever it travelled


def test_real_shape_really_sends_the_address_in_the_query(installed):
    # The "real" shape must not degrade into the documented one, or the test above proves nothing.
    _, b24 = installed
    query, body = frame_query_and_body(b24.placement_post())
    assert {"DOMAIN", "PROTOCOL", "LANG", "APP_SID"} == set(query) and not set(query) & set(body)


def test_the_body_wins_over_the_query(frame, installed, standin):
    _, b24 = installed
    recorder = standin.add_recorder()
    fields = b24.placement_post(lang="ru")
    query = urlencode({"DOMAIN": recorder.address, "LANG": "de", "PLACEMENT": "NOPE"})
    response = frame.post(f"/placement/?{query}", fields)
    assert is_widget(response)
    assert "Вы вошли как" in text(response)  # ru from the body, not de from the query
    assert recorder.requests == []


def test_a_foreign_domain_in_the_body_is_not_excused_by_the_query(frame, installed, standin):
    portal, b24 = installed
    recorder = standin.add_recorder()
    fields = b24.placement_post()
    fields["DOMAIN"] = recorder.address
    response = frame.post(f"/placement/?{urlencode({'DOMAIN': b24.domain})}", fields)
    assert response.status_code == 403
    assert recorder.requests == []


def test_the_handler_urls_own_query_string_is_kept(frame, installed):
    _, b24 = installed
    response = open_widget(frame, b24.placement_post(), shape="real", path="/placement/?from=contact-center")
    assert is_widget(response)


@pytest.mark.parametrize(
    "options",
    [None, "", "undefined", "null", "[]", "[1, 2]", '"text"', "42", "true", '{"ID": "7", "URI": "/contact_center/"}'],
)
def test_placement_options_that_are_not_an_object_count_as_empty(frame, installed, options):
    _, b24 = installed
    assert is_widget(open_widget(frame, with_fields(b24.placement_post(), PLACEMENT_OPTIONS=options)))


@pytest.mark.parametrize(
    "lang,title,message",
    [
        ("ru", "Неверный запрос", "Запрос от Битрикс24 некорректен (DOMAIN)."),
        ("de", "Fehlerhafte Anfrage", "Die Anfrage von Bitrix24 ist fehlerhaft (DOMAIN)."),
        ("ua", "Неверный запрос", "Запрос от Битрикс24 некорректен (DOMAIN)."),
        ("la", "Bad request", "The request from Bitrix24 is malformed (DOMAIN)."),
    ],
)
@pytest.mark.parametrize("shape", SHAPES)
def test_the_400_page_speaks_the_users_language(frame, installed, shape, lang, title, message):
    _, b24 = installed
    fields = b24.placement_post(lang=lang)
    fields["DOMAIN"] = "not a domain"
    response = open_widget(frame, fields, shape=shape)
    assert response.status_code == 400
    assert title in text(response) and message in text(response)


def test_get_explains_where_the_widget_opens(frame, django_assert_num_queries):
    with django_assert_num_queries(0):
        response = frame.get("/placement/")
    assert response.status_code == 200
    assert "This widget opens from inside Bitrix24, in the Contact Center." in text(response)
    assert response["Content-Security-Policy"] == "frame-ancestors 'none'"
    assert response["X-Frame-Options"] == "DENY"
    german = frame.get("/placement/?LANG=de")
    assert "Dieses Widget wird in Bitrix24 geöffnet, im Contact Center." in text(german)


@pytest.mark.parametrize("method", ["put", "delete", "patch"])
def test_other_methods_are_not_allowed(frame, method):
    assert getattr(frame, method)("/placement/").status_code == 405


def test_too_many_fields_is_a_readable_400_in_the_users_language(
    frame_500, installed, stored_state, django_assert_num_queries
):
    _, b24 = installed
    query, body = frame_query_and_body(b24.placement_post(lang="de"))
    body.update({f"junk{i}": "x" for i in range(1100)})  # past DATA_UPLOAD_MAX_NUMBER_FIELDS
    before = stored_state()
    with django_assert_num_queries(0):
        response = frame_500.post(f"/placement/?{urlencode(query)}", body)
    assert response.status_code == 400
    assert "Fehlerhafte Anfrage" in text(response)
    assert stored_state() == before


def test_an_oversized_body_is_a_readable_400_in_the_users_language(frame_500, installed, settings):
    _, b24 = installed
    fields = b24.placement_post(lang="ru")
    fields["PLACEMENT_OPTIONS"] = "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1)
    query = urlencode({"LANG": "ru"})
    response = frame_500.post(f"/placement/?{query}", fields)
    assert response.status_code == 400
    assert "Неверный запрос" in text(response)


# --- inputs that once reached the parser as 500s (portals/frame_post.py, shared with the install page) ---


def test_a_unicode_digit_in_auth_expires_is_a_400_not_a_500(frame_500, installed):
    _, b24 = installed
    fields = b24.placement_post()
    fields["AUTH_EXPIRES"] = "²"
    response = open_widget(frame_500, fields)
    assert response.status_code == 400
    assert "malformed (AUTH_EXPIRES)" in text(response)


def test_deeply_nested_placement_options_are_a_400_not_a_500(frame_500, installed):
    _, b24 = installed
    fields = b24.placement_post()
    fields["PLACEMENT_OPTIONS"] = '{"a":' * 2000 + "1" + "}" * 2000  # 12 001 characters
    response = open_widget(frame_500, fields)
    assert response.status_code == 400
    assert "malformed (PLACEMENT_OPTIONS)" in text(response)
