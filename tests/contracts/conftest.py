"""A stand-in that speaks HTTPS (b24pysdk only calls https://), and b24pysdk pointed at it.

The certificate is made here for 127.0.0.1 and handed to requests through REQUESTS_CA_BUNDLE, which
b24pysdk's plain ``requests.get``/``requests.post`` calls honour. b24pysdk's OAuth host is a class
constant (``https://oauth.bitrix24.tech``): the fixture points it at the stand-in's OAuth server, the
HTTP boundary and nothing of ours.
"""
import datetime
import ipaddress
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sandbox.standin import StandIn

CLIENT_ID = "app.5f0c1d2e3a4b56.12345678"
CLIENT_SECRET = "contract-secret"
OTHER_ID, OTHER_SECRET = "app.6a1b2c3d4e5f67.87654321", "other-contract-secret"


def _self_signed(folder):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "b24 stand-in")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "standin.crt", folder / "standin.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture(scope="session")
def tls_standin(tmp_path_factory):
    cert, key = _self_signed(tmp_path_factory.mktemp("tls"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    mp = pytest.MonkeyPatch()
    mp.setenv("REQUESTS_CA_BUNDLE", str(cert))
    mp.setenv("NO_PROXY", "127.0.0.1")
    with StandIn(CLIENT_ID, CLIENT_SECRET, tls=context) as standin:
        standin.add_app(OTHER_ID, OTHER_SECRET)
        standin.ca_bundle = str(cert)
        yield standin
        assert standin.errors == []
    mp.undo()


@pytest.fixture
def sdk(tls_standin, monkeypatch):
    """b24pysdk with its OAuth host pointed at the stand-in; fail fast, no retries."""
    from b24pysdk import Config
    from b24pysdk.api.requesters import BitrixOAuthRequester

    base = f"https://{tls_standin.address}"
    monkeypatch.setattr(BitrixOAuthRequester, "_OAUTH_TOKEN_URL", f"{base}/oauth/token/")
    monkeypatch.setattr(BitrixOAuthRequester, "_APP_INFO_URL", f"{base}/rest/app.info/")
    config = Config()
    saved = (config.default_max_retries, config.default_timeout)
    config.default_max_retries = 1
    config.default_timeout = 10
    yield tls_standin
    config.default_max_retries, config.default_timeout = saved


@pytest.fixture
def portal(tls_standin):
    portal = tls_standin.add_portal()
    portal.install_post()
    portal.finish_install()
    return portal


def token_for(portal, user_id="1", client_id=None, secret=None):
    """A b24pysdk BitrixToken holding a genuine token pair of that portal's user."""
    from b24pysdk import BitrixApp, BitrixToken

    tokens = portal.issue_tokens(user_id, client_id=client_id)
    app = BitrixApp(client_id=client_id or CLIENT_ID, client_secret=secret or CLIENT_SECRET)
    return BitrixToken(domain=portal.domain, auth_token=tokens["access_token"],
                       refresh_token=tokens["refresh_token"], expires_in=tokens["expires_in"], bitrix_app=app)


@pytest.fixture
def http_recorder():
    """A plain-HTTP recorder (an app's event handler) on its own stand-in."""
    with StandIn("recorder.app", "recorder-secret") as plain:
        yield plain.add_recorder()
