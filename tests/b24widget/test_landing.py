"""The landing page at `/`: what this deployment is, links to the admin and health, the sandbox with DEBUG."""

import pytest

pytestmark = pytest.mark.django_db


def test_the_root_url_explains_the_deployment(client, settings):
    response = client.get("/")
    assert response.status_code == 200
    page = response.content.decode()
    assert f"{settings.B24_APP_URL}/placement/" in page and f"{settings.B24_APP_URL}/install/" in page
    assert 'href="/admin/"' in page and 'href="/healthz"' in page
    assert "manage.py sandbox" not in page  # DEBUG is off in the test settings


def test_with_debug_it_says_how_to_start_the_sandbox(client, settings):
    settings.DEBUG = True
    page = client.get("/").content.decode()
    assert 'id="sandbox-help"' in page and "DEBUG=true .venv/bin/python manage.py sandbox" in page


def test_only_get(client):
    assert client.post("/").status_code == 405
