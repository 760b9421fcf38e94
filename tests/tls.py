"""HTTPS for the stand-in (b24pysdk only calls https://): a self-signed certificate for 127.0.0.1.

Shared by the contract tests (tests/contracts/conftest.py) and bench/peers.py. Standard library and
`cryptography` (already a dependency of the app) only, no Django: the stand-in itself stays pure standard
library, so the certificate is made here and handed to ``StandIn(tls=...)``.
"""

import datetime
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def self_signed_context(
    folder: Path, common_name: str = "b24 stand-in", *, names: tuple = ()
) -> tuple[Path, ssl.SSLContext]:
    """Write standin.crt/.key for 127.0.0.1 and the DNS `names` (valid a day) into `folder`; the certificate's
    path (a CA bundle for clients, e.g. REQUESTS_CA_BUNDLE) and a server-side SSLContext that serves it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), *(x509.DNSName(n) for n in names)]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = Path(folder) / "standin.crt", Path(folder) / "standin.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return cert_path, context
