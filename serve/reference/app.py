"""FastAPI app of the reference processing service (REMOTE_PROTOCOL.md, "Service endpoints").

Authentication is a middleware rather than a dependency so that it runs before FastAPI parses the
body: a request without the token gets 401 even when its body is malformed, and unknown paths do
not reveal themselves with 404 to an unauthenticated caller.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

import httpx
from fastapi import Body, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serve.reference.config import ReferenceConfig, SwitchBoard, Switches
from serve.reference.worker import Worker

logger = logging.getLogger(__name__)

# Task ids are uuid4 hex (32 digits) or dashed UUIDs; anything else, including any path
# separator or "..", is refused before it gets near the file system.
TASK_ID_PATTERN = (
    r"[0-9a-fA-F]{32}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
INPUT_FILE_PATTERN = rf"^(?:{TASK_ID_PATTERN})\.zip$"
_INPUT_FILE_RE = re.compile(INPUT_FILE_PATTERN)


class CheckModelRequest(BaseModel):
    """Fields named as the existing service names them (REMOTE_PROTOCOL.md)."""

    model_config = ConfigDict(extra="allow")

    id_client: str = Field(min_length=1)
    ManufacturerModelName: str
    ReconstructionMethod: str
    Iteraciones: int = Field(ge=0)
    Subsets: int = Field(ge=0)
    VoxelSpacing: list[float] = Field(min_length=3, max_length=3)
    SliceThickness: float = Field(gt=0)
    Radiofarmaco: str = Field(min_length=1)
    HalfLife: float = Field(gt=0)


class ProcessingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    input_file: str = Field(pattern=INPUT_FILE_PATTERN)
    client_id: str = Field(min_length=1)
    metadata: dict[str, Any]


def _bearer_ok(request: Request, token: str) -> bool:
    scheme, _, supplied = request.headers.get("authorization", "").partition(" ")
    # compare_digest keeps the comparison time independent of how much of the token matched.
    return scheme.lower() == "bearer" and hmac.compare_digest(supplied.encode(), token.encode())


def create_reference_app(
    config: ReferenceConfig, *, callback_transport: httpx.BaseTransport | None = None
) -> FastAPI:
    """Build the service; the worker threads start with the app (or on the first job)."""
    config.ensure_dirs()
    switches = SwitchBoard(config.switches)
    worker = Worker(config, switches, callback_transport=callback_transport)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        worker.start()
        try:
            yield
        finally:
            worker.stop()

    app = FastAPI(
        title="petray reference processing service",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.config = config
    app.state.switches = switches
    app.state.worker = worker

    @app.middleware("http")
    async def require_token(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if not _bearer_ok(request, config.token):
            return JSONResponse(
                {"detail": "missing or invalid bearer token"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return await call_next(request)

    def misbehave() -> Switches:
        current = switches.current
        if current.delay:
            time.sleep(current.delay)  # sync route: runs in the thread pool, not the event loop
        if current.fail_5xx:
            raise HTTPException(503, "service unavailable (fail_5xx switch)")
        return current

    @app.get("/check_ping")
    def check_ping() -> dict[str, str]:
        return {"response": "pong"}

    @app.post("/check_model")
    def check_model(body: CheckModelRequest) -> dict[str, str]:
        current = misbehave()
        if current.refuse is not None:
            raise HTTPException(current.refuse, "refused by the refuse switch")
        site = config.licences.site(body.id_client)
        if site is None or not site.active:
            raise HTTPException(405, "no active licence for this site")
        if not site.allows_radiopharmaceutical(body.Radiofarmaco):
            raise HTTPException(406, f"no licence for radiopharmaceutical {body.Radiofarmaco!r}")
        algorithm = site.algorithm_for(body.ManufacturerModelName, body.ReconstructionMethod)
        if algorithm is None:
            raise HTTPException(407, "no algorithm for this scanner model and reconstruction")
        return {"response": "OK", "algorithm": algorithm}

    @app.post("/processing", status_code=202)
    def processing(body: ProcessingRequest) -> dict[str, str]:
        misbehave()
        # The pattern already forbids separators; the regex check here keeps that true even if
        # the model's constraint is ever loosened.
        if not _INPUT_FILE_RE.fullmatch(body.input_file):
            raise HTTPException(422, "input_file must be '<task id>.zip'")
        task_id = body.input_file.removesuffix(".zip")
        if not (config.to_process_dir / body.input_file).is_file():
            raise HTTPException(404, f"to_process/{body.input_file} not found")
        worker.submit(task_id=task_id, client_id=body.client_id)
        return {"response": "Processing"}

    @app.get("/_jobs")
    def jobs() -> dict[str, list[dict[str, Any]]]:
        return {"jobs": worker.jobs()}

    @app.get("/_control")
    def get_control() -> dict[str, Any]:
        return switches.current.model_dump(mode="json")

    @app.post("/_control")
    def set_control(changes: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
        try:
            updated = switches.update(changes)
        except ValidationError as exc:
            errors = [{"loc": e["loc"], "msg": e["msg"]} for e in exc.errors()]
            raise HTTPException(422, errors) from None
        logger.info("switches now %s", updated.model_dump(mode="json", exclude_defaults=True))
        return updated.model_dump(mode="json")

    return app
