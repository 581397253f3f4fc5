"""TLS contexts for DICOM (PS3.15 B.1, the BCP 195 profile) and for checking the HTTP ones.

Certificates and keys are files on the gateway named by settings or by a device row; this
module reads them once per context and turns every problem into a ``ConfigurationError`` that
names the file, never a bare ``ssl.SSLError`` from deep inside an association.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from petray.db.models import Device
from petray.errors import ConfigurationError

# BCP 195 (RFC 9325, the PS3.15 B.9 "Non-downgrading" profile DCMTK uses by default): TLS 1.2 at
# least; Python's default cipher list already leaves out the suites it forbids.
MINIMUM_TLS_VERSION = ssl.TLSVersion.TLSv1_2


@dataclass(frozen=True)
class TlsFiles:
    """How to talk TLS to one peer: a CA bundle to verify it (system CAs when empty) and an
    optional client certificate and key for a peer that asks for one."""

    ca: str = ""
    cert: str = ""
    key: str = ""

    def __post_init__(self) -> None:
        if bool(self.cert) != bool(self.key):
            raise ConfigurationError("a TLS client certificate needs its key, and a key its cert")


def device_tls(device: Device) -> TlsFiles | None:
    """How to reach ``device`` over TLS; None when it is reached in plain DICOM."""
    if not device.tls:
        return None
    return TlsFiles(ca=device.tls_ca, cert=device.tls_cert, key=device.tls_key)


def _readable(path: str | Path, what: str) -> str:
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigurationError(f"{what} {file} does not exist or is not a file")
    try:
        file.open("rb").close()
    except OSError as exc:
        raise ConfigurationError(f"{what} {file} is not readable: {exc.strerror}") from None
    return str(file)


def _load_chain(context: ssl.SSLContext, cert: str | Path, key: str | Path) -> None:
    cert_file = _readable(cert, "TLS certificate")
    key_file = _readable(key, "TLS key")
    try:
        context.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as exc:
        raise ConfigurationError(
            f"TLS certificate {cert_file} and key {key_file} do not load: {exc.reason or exc}"
        ) from None


def _load_ca(context: ssl.SSLContext, ca: str | Path) -> None:
    ca_file = _readable(ca, "TLS CA file")
    try:
        context.load_verify_locations(cafile=ca_file)
    except ssl.SSLError as exc:
        raise ConfigurationError(
            f"TLS CA file {ca_file} does not load: {exc.reason or exc}"
        ) from None


def server_context(
    cert: str | Path, key: str | Path, *, ca: str | Path | None = None
) -> ssl.SSLContext:
    """The context of a TLS listener; with ``ca``, peers must present a certificate it signed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_TLS_VERSION
    _load_chain(context, cert, key)
    if ca:
        _load_ca(context, ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """The context to reach a TLS peer: its certificate verified, its host name checked."""
    # PROTOCOL_TLS_CLIENT verifies the certificate and checks the host name. A site CA, when
    # given, is the only one trusted: a public CA must not vouch for a hospital's PACS.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = MINIMUM_TLS_VERSION
    if files.ca:
        _load_ca(context, files.ca)
    else:
        context.load_default_certs()
    if files.cert:
        _load_chain(context, files.cert, files.key)
    return context


def tls_handshake(host: str, port: int, context: ssl.SSLContext, *, timeout_s: float = 5.0) -> str:
    """Connect and finish a TLS handshake; the negotiated version. Raises OSError/SSLError."""
    with (
        socket.create_connection((host, port), timeout=timeout_s) as raw,
        context.wrap_socket(raw, server_hostname=host) as wrapped,
    ):
        return wrapped.version() or "TLS"
