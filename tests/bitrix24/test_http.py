"""bitrix24.http's session: the environment is read once, and what it says is still honoured."""

from bitrix24 import http

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


def _clean(monkeypatch):
    for name in (*PROXY_VARIABLES, "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)


def test_without_a_proxy_the_environment_is_read_once_and_netrc_is_never_used(monkeypatch):
    _clean(monkeypatch)
    monkeypatch.setenv("NO_PROXY", "localhost")  # no proxy to bypass: still nothing to read per request
    made = http.new_session()
    assert made.trust_env is False and made.verify is True


def test_a_ca_bundle_from_the_environment_is_kept(monkeypatch, tmp_path):
    _clean(monkeypatch)
    bundle = tmp_path / "ca.pem"
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    assert http.new_session().verify == str(bundle)


def test_with_a_proxy_requests_keeps_reading_the_environment(monkeypatch):
    """no_proxy and friends stay requests' own business when a proxy is configured."""
    _clean(monkeypatch)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example.com:3128")
    assert http.new_session().trust_env is True
