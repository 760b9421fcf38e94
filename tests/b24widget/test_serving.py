"""Production serving: static files with DEBUG off, JSON log lines without secrets."""

import json
import logging

import pytest

from tests.conftest import do_install


def test_admin_static_files_are_served_with_debug_off(client, settings):
    assert settings.DEBUG is False
    response = client.get("/static/admin/css/base.css")
    assert response.status_code == 200
    assert b"body" in b"".join(response.streaming_content)


@pytest.mark.django_db
def test_log_lines_are_json_with_member_id_and_no_secret(client, b24, caplog):
    from pythonjsonlogger.json import JsonFormatter

    formatter = JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    with caplog.at_level(logging.DEBUG):
        portal = do_install(client, b24)
        client.post("/events/", b24.event_payload("ONAPPUNINSTALL", application_token="wrong"))
    lines = [formatter.format(record) for record in caplog.records]
    parsed = [json.loads(line) for line in lines]
    assert any(p.get("member_id") == portal.member_id and p.get("event") == "installed" for p in parsed)
    assert any(p.get("message") == "request refused" and p.get("source") == "ONAPPUNINSTALL" for p in parsed)
    text = "\n".join(lines)
    for secret in (portal.access_token, portal.refresh_token, portal.application_token, "test-client-secret"):
        assert secret not in text


@pytest.mark.django_db
def test_rest_errors_are_logged_with_member_id_and_request_id(installed, caplog):
    from bitrix24.errors import RestError
    from portals.tokens import PortalClient

    portal, b24 = installed
    with caplog.at_level(logging.INFO, logger="bitrix24.client"), pytest.raises(RestError):
        PortalClient(portal).call("no.such.method")
    [record] = [r for r in caplog.records if r.getMessage() == "rest error"]
    assert record.member_id == portal.member_id
    assert record.method == "no.such.method" and record.code == "ERROR_METHOD_NOT_FOUND"
    assert len(record.request_id) == 32


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/placement/", "/install/", "/events/", "/openlines/connector/"])
@pytest.mark.parametrize(
    "body,content_type",
    [
        (b"DOMAIN=%ff%fe&member_id=%c3%28&LANG=en&PROTOCOL=1", "application/x-www-form-urlencoded"),  # not UTF-8
        (b"\xff\xfe\x00garbage", "application/x-www-form-urlencoded"),
        (b"DOMAIN=a.bitrix24.de&member_id=x", "application/x-www-form-urlencoded; charset=klingon"),
        (b'--x\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n', "multipart/form-data; boundary=x"),
        (b'{"event": ' + b"[" * 50000, "application/json"),
    ],
)
def test_odd_bodies_on_every_entry_point_are_a_4xx(path, body, content_type):
    from django.test import Client

    response = Client(raise_request_exception=False).generic("POST", path, body, content_type=content_type)
    assert 400 <= response.status_code < 500, (response.status_code, response.content[:300])
