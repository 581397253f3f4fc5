"""Secrets, CSRF tokens and constant-time comparisons for the HTTP app (issue 5)."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import MutableMapping
from typing import Any

from petray.errors import ConfigurationError
from petray.settings import Settings
from petray.site.production import DEVELOPMENT_SECRETS, MIN_SECRET_LENGTH

log = logging.getLogger(__name__)

CSRF_SESSION_KEY = "csrf"
CSRF_FORM_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"


def secure_cookie(settings: Settings) -> bool:
    """Whether the session cookie carries ``Secure``: over HTTPS, and always in production
    (where a TLS proxy in front may terminate HTTPS instead of petray itself)."""
    return settings.production or settings.http_tls


def plain_http_login_problem(settings: Settings, scheme: str, forwarded_proto: str) -> str:
    """Why a login over this request cannot work, "" when it can (issue 10).

    A browser never sends a ``Secure`` cookie back over plain HTTP, so the login form's CSRF
    token (kept in that cookie) would be lost and login would loop without saying why.
    ``X-Forwarded-Proto`` only chooses this message, it grants nothing.
    """
    if not secure_cookie(settings) or "https" in (scheme, forwarded_proto.strip().lower()):
        return ""
    return (
        "This console is reached over plain HTTP, but its session cookie is sent over HTTPS "
        "only (production). Open it with https://, i.e. set PETRAY_HTTP_TLS_CERT and "
        "PETRAY_HTTP_TLS_KEY or put a TLS proxy in front."
    )


def resolve_secret_key(settings: Settings) -> str:
    """The session-signing key: required in production, random per process in development.

    A per-process random key means development sessions end when the process restarts, which is
    the price of never shipping a key that someone else also knows.
    """
    secret = settings.secret_key or ""
    if settings.production:
        if secret.strip().lower() in DEVELOPMENT_SECRETS:
            raise ConfigurationError(
                "PETRAY_SECRET_KEY must be set to a private random value in production mode"
            )
        if len(secret) < MIN_SECRET_LENGTH:
            raise ConfigurationError(
                f"PETRAY_SECRET_KEY must have at least {MIN_SECRET_LENGTH} characters"
            )
        return secret
    if secret and secret.strip().lower() not in DEVELOPMENT_SECRETS:
        return secret
    log.warning(
        "PETRAY_SECRET_KEY is not set: using a random key for this process "
        "(console sessions end when it restarts); set it in production"
    )
    return secrets.token_urlsafe(48)


def tokens_equal(given: str, expected: str) -> bool:
    """Compare secrets in constant time, so response timing does not reveal a prefix."""
    return hmac.compare_digest(given.encode(), expected.encode())


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def csrf_token(session: MutableMapping[str, Any]) -> str:
    """The session-bound CSRF token, created on first use (also for anonymous login forms)."""
    token = session.get(CSRF_SESSION_KEY)
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(32)
        session[CSRF_SESSION_KEY] = token
    return token


def csrf_valid(session: MutableMapping[str, Any], given: str | None) -> bool:
    expected = session.get(CSRF_SESSION_KEY)
    if not isinstance(expected, str) or not expected or not given:
        return False
    return tokens_equal(given, expected)


def password_version(password_hash: str) -> str:
    """A short fingerprint stored in the session: changing a password ends existing sessions."""
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]
