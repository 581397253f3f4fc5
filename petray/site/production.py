"""What production mode refuses before anything starts (issue 9).

A gateway with ``PETRAY_PRODUCTION=true`` must not run with a secret anyone can read in this
repository: the development defaults in ``petray.settings`` are printed there, and an unset
secret would fall back to them. ``petray start`` checks these rules before Ray starts, so an
operator gets every problem at once, one line each, in a second instead of after the cluster.
"""

from __future__ import annotations

from petray.settings import Settings

MIN_SECRET_LENGTH = 32
# Secrets that appear in the code, the docs or examples, or are otherwise guessable.
DEVELOPMENT_SECRETS = frozenset(
    {
        "",
        "changeme",
        "change-me",
        "secret",
        "secret-key",
        "petray",
        "petray-secret",
        "petray-dev-secret",
        "development",
        "insecure",
        Settings.model_fields["remote_token"].default,
        Settings.model_fields["callback_token"].default,
    }
)
# (setting, environment variable, what it protects), in the order problems are reported.
SECRETS = (
    ("secret_key", "PETRAY_SECRET_KEY", "signs console sessions"),
    ("callback_token", "PETRAY_CALLBACK_TOKEN", "the service's proof on /process_ready"),
    ("remote_token", "PETRAY_REMOTE_TOKEN", "petray's proof to the processing service"),
)


def is_development_secret(value: str | None) -> bool:
    """A secret production refuses: unset, a known default, or short enough to guess."""
    if value is None:
        return True
    return value.strip().lower() in DEVELOPMENT_SECRETS or len(value) < MIN_SECRET_LENGTH


def secret_problem(value: str | None, variable: str, purpose: str) -> str:
    """Why ``value`` may not be used in production; "" when it may."""
    if value is None or not value.strip():
        return f"{variable} is not set ({purpose}): set a private random value"
    if value.strip().lower() in DEVELOPMENT_SECRETS:
        return f"{variable} is a development default ({purpose}): set a private random value"
    if len(value) < MIN_SECRET_LENGTH:
        return (
            f"{variable} has {len(value)} characters ({purpose}): use at least {MIN_SECRET_LENGTH}"
        )
    return ""


def production_problems(settings: Settings) -> list[str]:
    """One line per secret production mode refuses; empty when all may be used.

    Judges the values as production values whatever ``settings.production`` says; the caller
    decides whether the mode applies.
    """
    problems = []
    for field, variable, purpose in SECRETS:
        problem = secret_problem(getattr(settings, field), variable, purpose)
        if problem:
            problems.append(problem)
    return problems
