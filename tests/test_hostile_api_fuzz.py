"""OpenAPI-driven fuzz of the REST API (issue 9): schemathesis generates requests from the app's
own /openapi.json, valid and invalid, and no answer may be a server error.

In-process (the ASGI app on SQLite, a fake pipeline), authenticated as admin with an API token
so that the handlers behind authentication are reached too, and once anonymous. Bounded
(EXAMPLES per operation, derandomized) to stay well under a minute.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from petray.db.engine import unit_of_work
from petray.site.users import create_api_token, get_user_by_name
from tests.support.app import AppHarness, build_harness

EXAMPLES = 12
STRANGER_EXAMPLES = 3
# 401 (who are you), 404/405 for paths and methods that do not exist, 413/422 for bodies
# refused before authentication is even asked.
STRANGER_ANSWERS = {401, 404, 405, 413, 422}
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
# Answers that are a verdict, not a failure: the health check says "down" with 503 (the fake
# pipeline's service URL points nowhere).
EXPECTED_5XX = {("GET", "/api/v1/health"): {503}}


@dataclass
class Fuzzed:
    harness: AppHarness
    token: str
    server_errors: list[str]


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    for harness in build_harness(Path(tmp_path_factory.mktemp("api-fuzz"))):
        with unit_of_work(harness.sessions) as session:
            admin = get_user_by_name("admin", session=session)
            assert admin is not None
            token = create_api_token(admin, session=session)[1]
        yield Fuzzed(harness, token, [])


@pytest.fixture(scope="module")
def api_schema(fuzzed: Fuzzed) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_asgi("/openapi.json", fuzzed.harness.client.app)


def operations(schema: schemathesis.BaseSchema) -> list[Any]:
    found = []
    for result in schema.get_all_operations():
        operation = result.ok()
        # Revoking its own token would leave the rest of the run anonymous.
        if (operation.method.upper(), operation.path) != ("DELETE", "/api/v1/tokens/{token_id}"):
            found.append(operation)
    return found


def check(fuzzed: Fuzzed, case: schemathesis.Case, status: int, body: str) -> None:
    allowed = EXPECTED_5XX.get((case.method.upper(), case.path), set())
    if status >= 500 and status not in allowed:
        fuzzed.server_errors.append(f"{case.method} {case.formatted_path}: {status}")
        pytest.fail(f"{case.method} {case.formatted_path} answered {status}: {body[:300]}")


def fuzz(schema: schemathesis.BaseSchema, examples: int, run: Callable[[Any], None]) -> int:
    """``run`` on ``examples`` generated cases of every operation; returns how many operations."""
    found = operations(schema)
    for operation in found:
        # One hypothesis run per operation, so each gets its share of examples.
        def one(case: schemathesis.Case) -> None:
            run(case)

        settings(FUZZ, max_examples=examples)(given(case=operation.as_strategy())(one))()
    return len(found)


def test_api_never_answers_a_server_error_to_admin(
    fuzzed: Fuzzed, api_schema: schemathesis.BaseSchema
) -> None:
    def run(case: schemathesis.Case) -> None:
        response = case.call(headers={"Authorization": f"Bearer {fuzzed.token}"})
        check(fuzzed, case, response.status_code, response.text)

    assert fuzz(api_schema, EXAMPLES, run) >= 20  # the whole API, not an empty schema
    assert fuzzed.server_errors == []


def test_api_never_answers_a_server_error_to_strangers(
    fuzzed: Fuzzed, api_schema: schemathesis.BaseSchema
) -> None:
    def run(case: schemathesis.Case) -> None:
        response = case.call(headers={"Authorization": "Bearer ptr_not-a-token"})
        check(fuzzed, case, response.status_code, response.text)
        if case.path.startswith("/api/v1/") and case.path != "/api/v1/health":
            # Nothing behind authentication answers a stranger with anything but a refusal.
            assert response.status_code in STRANGER_ANSWERS, (
                case.method,
                case.formatted_path,
                response.status_code,
            )

    assert fuzz(api_schema, STRANGER_EXAMPLES, run) >= 20
