"""A STOW-RS destination's settings (issue 15): its URL and credentials, validated, and how
the credentials are shown (masked). Light on purpose: the site configuration, the API schemas
and the CLI check a device with it without loading the HTTP client in ``petray.dicom.stow``.
"""

from __future__ import annotations

from urllib.parse import urlsplit

# A service URL is stored in the device's host column (see petray.site.siteconfig), a VARCHAR(255).
MAX_URL_LENGTH = 255


def validate_stow_url(value: str) -> str:
    """The STOW-RS service URL (base of ``/studies``), without a trailing slash; else ValueError."""
    url = value.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("STOW-RS URL must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        # A password in a URL ends up in logs and listings: credentials have their own fields.
        raise ValueError("STOW-RS URL must not carry user:password (use --token or --basic)")
    if parts.query or parts.fragment or any(ch.isspace() for ch in url):
        raise ValueError("STOW-RS URL must not have a query, a fragment or spaces")
    if parts.path.endswith("/studies"):
        raise ValueError("give the DICOMweb service's base URL: petray appends /studies itself")
    if len(url) > MAX_URL_LENGTH:
        raise ValueError(f"STOW-RS URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        raise ValueError("STOW-RS URL has an invalid port") from None
    return url


def _printable(value: str) -> bool:
    # Control characters (CR/LF above all) in a header value would inject headers.
    return value.isascii() and all(0x20 < ord(ch) < 0x7F for ch in value)


def validate_token(value: str) -> str:
    token = value.strip()
    if token and not _printable(token):
        raise ValueError("token must be printable ASCII without spaces")
    return token


def validate_basic(value: str) -> str:
    """``user:password`` for HTTP Basic, or "" for none; ValueError otherwise."""
    basic = value.strip()
    if not basic:
        return ""
    user, colon, password = basic.partition(":")
    if not colon or not user or not password:
        raise ValueError("HTTP Basic credentials must be given as user:password")
    if not _printable(user) or not all(0x20 <= ord(ch) < 0x7F for ch in password):
        raise ValueError("HTTP Basic user and password must be printable ASCII")
    return basic


def auth_label(token: str, basic: str) -> str:
    """How a STOW-RS device authenticates, the secret masked (``basic alice:****``)."""
    if token:
        return "bearer ****"
    if basic:
        return f"basic {basic.partition(':')[0]}:****"
    return "no credentials"
