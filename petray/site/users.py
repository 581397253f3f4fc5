"""Console users, roles, password hashing and API tokens (issue 5).

Passwords are hashed with argon2id (memory-hard, argon2-cffi's defaults follow RFC 9106's second
recommended option). API tokens are long random strings, so a plain SHA-256 is enough to store
them: there is nothing to brute-force, and a lookup by hash stays one indexed query.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from petray.db.models import ApiToken, User
from petray.errors import ConfigurationError

log = logging.getLogger(__name__)

NAME_MAX_LENGTH = 64
# Issue 5 (users page): initial and reset passwords have at least 12 characters.
MIN_PASSWORD_LENGTH = 12
PASSWORD_MAX_LENGTH = 1024
# Issue 9: twelve spaces or "aaaaaaaaaaaa" passed the length rule. Five different characters
# rule out one repeated character and short repeated patterns ("abababababab").
MIN_DISTINCT_CHARACTERS = 5
# A user name shorter than this is not searched for inside the password ("op" in "operator").
NAME_IN_PASSWORD_MIN_LENGTH = 3
# The words every password-guessing list starts with, and keyboard and digit runs: refused when
# the password is one of them padded with digits and punctuation ("Password1234!").
COMMON_PASSWORD_WORDS = frozenset(
    {
        "password",
        "passw0rd",
        "qwerty",
        "qwertyuiop",
        "asdfghjkl",
        "azerty",
        "letmein",
        "welcome",
        "admin",
        "administrator",
        "changeme",
        "iloveyou",
        "monkey",
        "dragon",
        "football",
        "baseball",
        "sunshine",
        "princess",
        "master",
        "secret",
        "petray",
        "hospital",
        "abcdefghijkl",
        "abc",
    }
)
TOKEN_PREFIX = "ptr_"
# Lockout: the first few mistakes are free (typos), then each further failure doubles the wait.
FREE_FAILURES = 4
LOCKOUT_BASE = timedelta(seconds=30)
LOCKOUT_MAX = timedelta(minutes=15)

_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Verifying against a real hash when the user does not exist keeps the response time the
    same, so the login form does not reveal which user names exist. Made on first use: a hash
    costs a third of a second, which every process importing this module would pay at start.
    """
    return _hasher.hash(secrets.token_urlsafe(16))


class Role(StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    VIEWER = "viewer"


ROLE_RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


def has_role(role: str, needed: Role) -> bool:
    """Admin may do everything an operator may, an operator everything a viewer may."""
    try:
        return ROLE_RANK[Role(role)] >= ROLE_RANK[needed]
    except ValueError:
        return False


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


class WeakPassword(ConfigurationError):
    """A password the policy refuses; the message says which rule, never the password."""


def check_password_policy(password: str, *, user_name: str = "") -> None:
    """Refuse passwords that are short, blank, repetitive, common, or built on the user name.

    The same rules hold for ``petray user add``, the console and the API, which all create and
    reset passwords through this module.
    """
    if len(password) < MIN_PASSWORD_LENGTH:
        raise WeakPassword(f"password must have at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > PASSWORD_MAX_LENGTH:
        # The login form accepts no more, so a longer password could never be typed in.
        raise WeakPassword(f"password must have at most {PASSWORD_MAX_LENGTH} characters")
    if not password.strip():
        raise WeakPassword("password must not be only spaces")
    if len(set(password)) < MIN_DISTINCT_CHARACTERS:
        raise WeakPassword(
            f"password must use at least {MIN_DISTINCT_CHARACTERS} different characters"
        )
    lowered = password.casefold()
    name = user_name.strip().casefold()
    if name and (lowered == name or (len(name) >= NAME_IN_PASSWORD_MIN_LENGTH and name in lowered)):
        raise WeakPassword("password must not contain the user name")
    letters = "".join(ch for ch in lowered if ch.isalpha())
    if letters in COMMON_PASSWORD_WORDS or _is_run(lowered):
        raise WeakPassword("password is too common: use a few unrelated words")


def _is_run(text: str) -> bool:
    """A keyboard-style run of consecutive characters ("123456789012", "abcdefghijkl")."""
    steps = {ord(b) - ord(a) for a, b in itertools.pairwise(text)}
    return steps <= {1, -9} or steps <= {-1, 9}


def parse_role(role: Role | str) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise ConfigurationError(f"unknown role {role!r}") from None


def validate_user_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > NAME_MAX_LENGTH or any(ch.isspace() for ch in name):
        raise ConfigurationError(f"user name must be 1-{NAME_MAX_LENGTH} characters, no spaces")
    return name


def create_user(*, session: Session, name: str, password: str, role: Role | str) -> User:
    name = validate_user_name(name)
    role = parse_role(role)
    check_password_policy(password, user_name=name)
    if get_user_by_name(name, session=session) is not None:
        raise ConfigurationError(f"a user named {name!r} already exists")
    user = User(name=name, password_hash=hash_password(password), role=role, failed_logins=0)
    session.add(user)
    session.flush()
    return user


def set_password(user: User, password: str) -> None:
    """A new password (also an admin's reset); signs out the user's browser sessions."""
    check_password_policy(password, user_name=user.name)
    user.password_hash = hash_password(password)
    unlock(user)


def get_user_by_name(name: str, *, session: Session) -> User | None:
    return session.scalar(select(User).where(User.name == name))


def list_users(*, session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.name)))


def is_locked(user: User, *, now: datetime | None = None) -> bool:
    return user.locked_until is not None and user.locked_until > (now or datetime.now(UTC))


def unlock(user: User) -> None:
    """Lift a login lockout now and forget the failures counted so far."""
    user.failed_logins = 0
    user.locked_until = None


def _other_admins(user: User, *, session: Session) -> int:
    stmt = select(func.count(User.id)).where(User.role == Role.ADMIN, User.id != user.id)
    return session.scalar(stmt) or 0


def change_role(user: User, role: Role | str, *, session: Session) -> None:
    """Give ``user`` another role; the last admin keeps theirs (nobody could manage users)."""
    role = parse_role(role)
    if user.role == Role.ADMIN and role != Role.ADMIN and not _other_admins(user, session=session):
        raise ConfigurationError("the last admin cannot lose the admin role")
    user.role = role


def delete_user(user: User, *, session: Session, acting_user_id: int | None = None) -> None:
    """Delete a user and their API tokens; never the acting user, never the last admin."""
    if user.id == acting_user_id:
        raise ConfigurationError("you cannot delete your own account")
    if user.role == Role.ADMIN and not _other_admins(user, session=session):
        raise ConfigurationError("the last admin cannot be deleted")
    # Explicit rather than relying on ON DELETE CASCADE, which SQLite only honours when its
    # foreign_keys pragma is on.
    session.execute(delete(ApiToken).where(ApiToken.user_pk == user.id))
    session.delete(user)


class LoginOutcome(StrEnum):
    OK = "ok"
    INVALID = "invalid"
    LOCKED = "locked"


@dataclass(frozen=True)
class LoginResult:
    outcome: LoginOutcome
    user: User | None = None
    retry_after_s: int = 0


def lockout_delay(failed_logins: int) -> timedelta:
    extra = failed_logins - FREE_FAILURES
    if extra <= 0:
        return timedelta(0)
    delay: timedelta = min(LOCKOUT_BASE * (2 ** min(extra - 1, 16)), LOCKOUT_MAX)
    return delay


def authenticate(
    name: str,
    password: str,
    *,
    session: Session,
    now: datetime | None = None,
    enforce_lockout: bool = True,
) -> LoginResult:
    """Check a login; counts failures and locks the account with a growing delay.

    While locked, even the right password is refused, so guessing cannot go faster than the delay.
    ``enforce_lockout=False`` checks the password of a locked account all the same: the caller
    passes it for a client address with no recent failures (petray.site.login_throttle), so that a
    stranger's wrong passwords cannot keep the user out (issue 9). Failures still count.
    """
    now = now or datetime.now(UTC)
    user = get_user_by_name(name.strip(), session=session)
    if user is None:
        verify_password(_dummy_hash(), password)
        return LoginResult(LoginOutcome.INVALID)
    if enforce_lockout and user.locked_until is not None and user.locked_until > now:
        wait = user.locked_until - now
        return LoginResult(LoginOutcome.LOCKED, retry_after_s=int(wait.total_seconds()) + 1)
    if not verify_password(user.password_hash, password):
        user.failed_logins += 1
        delay = lockout_delay(user.failed_logins)
        if delay:
            user.locked_until = now + delay
            log.warning(
                "login locked for user id %s after %d failures", user.id, user.failed_logins
            )
        return LoginResult(LoginOutcome.INVALID)
    user.failed_logins = 0
    user.locked_until = None
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    return LoginResult(LoginOutcome.OK, user=user)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_api_token(user: User, *, session: Session, label: str = "") -> tuple[ApiToken, str]:
    """A new token for scripts; the clear text is returned once and never stored."""
    clear = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(user_pk=user.id, token_hash=hash_token(clear), label=label.strip()[:64])
    session.add(token)
    session.flush()
    return token, clear


def user_for_token(clear: str, *, session: Session) -> User | None:
    if not clear.startswith(TOKEN_PREFIX):
        return None
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(clear)))
    if row is None:
        return None
    return session.get(User, row.user_pk)


def list_api_tokens(user: User, *, session: Session) -> list[ApiToken]:
    return list(
        session.scalars(select(ApiToken).where(ApiToken.user_pk == user.id).order_by(ApiToken.id))
    )


def revoke_api_token(token_id: int, *, session: Session, user: User | None = None) -> None:
    """Delete a token; with ``user`` given, only that user's own token."""
    # An id beyond 64 bits is no token's (not an overflow in the driver: issue 9).
    row = session.get(ApiToken, token_id) if 0 < token_id < 2**63 else None
    if row is None or (user is not None and row.user_pk != user.id):
        raise ConfigurationError(f"no API token with id {token_id}")
    session.delete(row)
