"""HTTP client for the remote processing service (../shared/REMOTE_PROTOCOL.md, v1).

Every call carries the bearer token and a timeout. Answers are translated into petray's error
hierarchy here, at the edge, so that the stages only see:

- ``RemoteRefused`` (405/406/407): licence or algorithm refusal, the task fails, never retried;
- ``TransientError``: 5xx, 408/429, timeouts and connection errors, retried with backoff;
- ``ConfigurationError``: 401, the shared token is wrong, retrying cannot help;
- ``PermanentError``: any other 4xx, a request the service will always reject.
"""

from __future__ import annotations

import logging
import time
from http import HTTPStatus
from types import TracebackType
from typing import Any, Self

import httpx

from petray.errors import ConfigurationError, PermanentError, RemoteRefused, TransientError

logger = logging.getLogger(__name__)

CHECK_PING_PATH = "/check_ping"
CHECK_MODEL_PATH = "/check_model"
PROCESSING_PATH = "/processing"

# The service's licence and algorithm answers (REMOTE_PROTOCOL.md, "POST /check_model").
NO_ACTIVE_LICENCE = 405
NO_RADIOPHARMACEUTICAL_LICENCE = 406
NO_ALGORITHM = 407
REFUSAL_REASONS: dict[int, str] = {
    NO_ACTIVE_LICENCE: "the remote service reports no active licence for this site",
    NO_RADIOPHARMACEUTICAL_LICENCE: (
        "the remote service has no licence for this radiopharmaceutical at this site"
    ),
    NO_ALGORITHM: (
        "the remote service has no algorithm for this scanner model and reconstruction method"
    ),
}
# Statuses below 500 that still mean "try again later".
TRANSIENT_CLIENT_STATUSES = frozenset({HTTPStatus.REQUEST_TIMEOUT, HTTPStatus.TOO_MANY_REQUESTS})
ACCEPTED_PROCESSING_STATUSES = frozenset({HTTPStatus.OK, HTTPStatus.ACCEPTED})
MAX_DETAIL_CHARS = 300


def _detail(response: httpx.Response) -> str:
    """A short, log-safe description of the service's error body.

    FastAPI validation errors echo the offending ``input``; only locations and messages are kept
    so that nothing the service echoes back from the metadata lands in a task reason.
    """
    try:
        body: Any = response.json()
    except ValueError:
        return response.text[:MAX_DETAIL_CHARS].strip()
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", ()))
                parts.append(f"{loc}: {item.get('msg', '')}".strip(": "))
        detail = "; ".join(parts)
    return str(detail)[:MAX_DETAIL_CHARS]


def raise_for_remote_status(response: httpx.Response, *, accepted: frozenset[int]) -> None:
    """Translate a service answer into petray's error hierarchy (no-op when ``accepted``)."""
    status = response.status_code
    if status in accepted:
        return
    what = f"{response.request.method} {response.request.url.path}"
    if status in REFUSAL_REASONS:
        detail = _detail(response)
        reason = REFUSAL_REASONS[status]
        raise RemoteRefused(status, f"{reason} ({status}: {detail})" if detail else reason)
    if status == HTTPStatus.UNAUTHORIZED:
        raise ConfigurationError(
            f"remote service rejected petray's token on {what} (401); "
            "check PETRAY_REMOTE_TOKEN on both sides"
        )
    if status >= HTTPStatus.INTERNAL_SERVER_ERROR or status in TRANSIENT_CLIENT_STATUSES:
        raise TransientError(f"remote service answered {status} to {what}")
    raise PermanentError(f"remote service answered {status} to {what}: {_detail(response)}")


class RemoteClient:
    """Synchronous client for the service endpoints petray calls; one per process or actor.

    ``transport`` lets tests plug in an in-process or mock transport; production leaves it unset.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout_s: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not token:
            raise ConfigurationError("the remote service token is empty (PETRAY_REMOTE_TOKEN)")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(timeout_s),
            transport=transport,
            # Redirects could carry the bearer token to another host; the service never needs them.
            follow_redirects=False,
        )

    def _request(self, method: str, path: str, json: object | None = None) -> httpx.Response:
        try:
            return self._client.request(method, path, json=json)
        except httpx.TimeoutException as exc:
            raise TransientError(f"remote service timed out on {method} {path}") from exc
        except httpx.TransportError as exc:
            raise TransientError(
                f"remote service unreachable on {method} {path}: {type(exc).__name__}"
            ) from exc

    def ping(self) -> float:
        """Round-trip time of ``GET /check_ping`` in seconds; ``TransientError`` when down."""
        started = time.perf_counter()
        response = self._request("GET", CHECK_PING_PATH)
        elapsed = time.perf_counter() - started
        raise_for_remote_status(response, accepted=frozenset({HTTPStatus.OK}))
        return elapsed

    def check_model(self, payload: dict[str, Any]) -> None:
        """``POST /check_model``: returns when the service accepts the task, raises otherwise."""
        response = self._request("POST", CHECK_MODEL_PATH, json=payload)
        raise_for_remote_status(response, accepted=frozenset({HTTPStatus.OK}))

    def start_processing(self, *, task_id: str, client_id: str, metadata: dict[str, Any]) -> None:
        """``POST /processing`` for ``to_process/{task_id}.zip``; safe to repeat for one task."""
        body = {"input_file": f"{task_id}.zip", "client_id": client_id, "metadata": metadata}
        response = self._request("POST", PROCESSING_PATH, json=body)
        raise_for_remote_status(response, accepted=ACCEPTED_PROCESSING_STATUSES)
        logger.info("remote service accepted task %s for processing", task_id)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
