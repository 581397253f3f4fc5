"""DICOMweb STOW-RS (PS3.18 10.5): storing a task's instances at a destination over HTTP.

The same contract as C-STORE in ``petray.dicom.scu`` (issue 15): instances already acknowledged are
skipped, ``on_sent`` records each acknowledged one before the next batch goes out, and failures
arrive as the petray error hierarchy. Transient: connection errors, timeouts, 408/429/5xx, and
instances refused for lack of resources (0xA7xx). Permanent (``DeliveryRefused``): 401/403 (the
credentials), 409 and other 4xx, a redirect, and instances the destination refused for any
other reason, with its FailureReason (0008,1197) in the message.

Credentials travel only in the Authorization header and are never part of a message, a log
line or a ``repr``; URLs carrying user:password are refused when the device is configured.
"""

from __future__ import annotations

import json
import logging
import secrets
import ssl
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from pydicom.dataset import Dataset
from pynetdicom.status import GENERAL_STATUS, STORAGE_SERVICE_CLASS_STATUS

from petray.dicom.scu import OutgoingInstance
from petray.dicom.tls import TlsFiles, client_context
from petray.errors import ConfigurationError, DeliveryRefused, PermanentError, TransientError

logger = logging.getLogger(__name__)

# A batch is one HTTP request. Bounded by count and bytes: a failed request costs at most one
# batch of resending, and proxies in front of archives commonly cap request bodies (nginx's
# client_max_body_size) well below a whole PET series (~250 MB for 645 slices).
MAX_BATCH_INSTANCES = 50
MAX_BATCH_BYTES = 32 * 1024 * 1024
# Seconds to connect; the whole-request timeout is the caller's (a batch can be tens of MB).
CONNECT_TIMEOUT_S = 10.0
DEFAULT_TIMEOUT_S = 120.0
MEDIA_TYPE = "application/dicom"
ACCEPT = "application/dicom+json"
# PS3.18 10.5.3: retrying cannot help with these; 408, 429 and 5xx may heal by themselves.
TRANSIENT_HTTP = frozenset({408, 425, 429})
# A failure reason saying the destination lacked resources (PS3.4 B.2.3 "Refused: Out of
# Resources" 0xA7xx; PS3.7 C "Resource limitation" 0x0213) may succeed later.
RESOURCE_LIMITATION = 0x0213
OUT_OF_RESOURCES = range(0xA700, 0xA800)
# Failed instances named in one refusal message; the rest are counted.
REASONS_SHOWN = 3


@dataclass(frozen=True)
class StowEndpoint:
    """A STOW-RS service and how to authenticate to it; ``str()`` never shows the secrets."""

    url: str
    token: str = field(default="", repr=False)
    basic: str = field(default="", repr=False)
    tls: TlsFiles = field(default_factory=TlsFiles)

    def __post_init__(self) -> None:
        if self.token and self.basic:
            raise ConfigurationError(
                "a STOW-RS destination takes a token or user:password, not both"
            )

    def __str__(self) -> str:
        return self.url

    @property
    def auth_kind(self) -> str:
        return "bearer" if self.token else "basic" if self.basic else "none"

    def headers(self) -> dict[str, str]:
        headers = {"Accept": ACCEPT}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def auth(self) -> httpx.BasicAuth | None:
        if not self.basic:
            return None
        user, _, password = self.basic.partition(":")
        return httpx.BasicAuth(user, password)

    def verify(self) -> ssl.SSLContext | bool:
        """The TLS context for an https URL (the device's CA, else the system CAs)."""
        if not self.url.startswith("https://"):
            return True  # unused for plain http
        return client_context(self.tls)


@dataclass(frozen=True)
class StowInstance:
    """One file to store: what the response is matched on, and its size for batching."""

    path: Path
    sop_instance_uid: str
    size: int


@dataclass(frozen=True)
class StoreOutcome:
    """What a STOW-RS response says about the instances of one request."""

    stored: tuple[str, ...]
    # (SOP Instance UID, FailureReason code or None when the response gave none)
    failed: tuple[tuple[str, int | None], ...] = ()
    warnings: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class StowReport:
    """What one ``store_instances`` call delivered."""

    endpoint: StowEndpoint
    sent: int
    skipped: int
    warnings: tuple[tuple[str, str], ...]
    elapsed_s: float
    requests: int = 0
    bytes_sent: int = 0


# -- planning ----------------------------------------------------------------------------------


def plan(paths: Sequence[Path], skip_sop_uids: Collection[str]) -> tuple[list[StowInstance], int]:
    """The files still to store (in order, each SOP instance once) and how many were skipped."""
    skip = set(skip_sop_uids)
    outgoing: list[StowInstance] = []
    skipped = 0
    for path in paths:
        item = OutgoingInstance.from_file(Path(path))
        uid = str(item.sop_instance_uid)
        if uid in skip:
            skipped += 1
            continue
        skip.add(uid)  # a repeated SOP Instance UID would be a duplicate at the destination
        outgoing.append(StowInstance(item.path, uid, item.path.stat().st_size))
    return outgoing, skipped


def batches(
    items: Sequence[StowInstance],
    *,
    max_instances: int = MAX_BATCH_INSTANCES,
    max_bytes: int = MAX_BATCH_BYTES,
) -> list[list[StowInstance]]:
    """Consecutive groups within both bounds; an instance larger than ``max_bytes`` goes alone."""
    if max_instances < 1 or max_bytes < 1:
        raise ValueError("batch bounds must be positive")
    groups: list[list[StowInstance]] = []
    current: list[StowInstance] = []
    size = 0
    for item in items:
        if current and (len(current) >= max_instances or size + item.size > max_bytes):
            groups.append(current)
            current, size = [], 0
        current.append(item)
        size += item.size
    if current:
        groups.append(current)
    return groups


# -- the request body (PS3.18 8.6.1.2, RFC 2387) ------------------------------------------------


def new_boundary() -> str:
    # Random, so it cannot occur inside a DICOM file by accident (RFC 2046 5.1.1: <= 70 chars).
    return f"petray-{secrets.token_hex(16)}"


def content_type(boundary: str) -> str:
    return f'multipart/related; type="{MEDIA_TYPE}"; boundary={boundary}'


def _part_head(boundary: str) -> bytes:
    return f"--{boundary}\r\nContent-Type: {MEDIA_TYPE}\r\n\r\n".encode("ascii")


def _closing(boundary: str) -> bytes:
    return f"--{boundary}--\r\n".encode("ascii")


def body_length(items: Sequence[StowInstance], boundary: str) -> int:
    per_part = len(_part_head(boundary)) + len(b"\r\n")
    return sum(item.size + per_part for item in items) + len(_closing(boundary))


def multipart_body(items: Sequence[StowInstance], boundary: str) -> Iterator[bytes]:
    """The body, read from disk part by part: a batch of tens of MB is never held in memory."""
    for item in items:
        yield _part_head(boundary)
        with item.path.open("rb") as file:
            while chunk := file.read(1 << 20):
                yield chunk
        yield b"\r\n"
    yield _closing(boundary)


# -- the response (PS3.18 10.5.3) ---------------------------------------------------------------


def _response_dataset(content: bytes) -> Dataset | None:
    """The response's Store Instances Response Module, None when there is none to read."""
    try:
        parsed = json.loads(content) if content.strip() else None
        # Some servers wrap the one dataset in a JSON array.
        if isinstance(parsed, list) and len(parsed) == 1:
            parsed = parsed[0]
        return Dataset.from_json(parsed) if isinstance(parsed, dict) else None
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def _code(item: Dataset, keyword: str) -> int | None:
    value = item.get(keyword)
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def parse_response(status_code: int, content: bytes, sent: Sequence[str]) -> StoreOutcome:
    """Which of ``sent`` a 200/202/409 response says were stored, with warnings, or failed.

    Instances a 202 or 409 response names nowhere are counted as failed without a reason: they
    were not acknowledged, so they must be sent again rather than recorded.
    """
    ds = _response_dataset(content)
    wanted = set(sent)
    failed: dict[str, int | None] = {}
    referenced: set[str] = set()
    warnings: list[tuple[str, int]] = []
    if ds is not None:
        for item in ds.get("FailedSOPSequence") or []:
            uid = str(item.get("ReferencedSOPInstanceUID", ""))
            if uid in wanted:
                failed[uid] = _code(item, "FailureReason")
        for item in ds.get("ReferencedSOPSequence") or []:
            uid = str(item.get("ReferencedSOPInstanceUID", ""))
            if uid in wanted and uid not in failed:
                referenced.add(uid)
                warning = _code(item, "WarningReason")
                if warning is not None:
                    warnings.append((uid, warning))
    if status_code == 200 and not failed:
        # 200: every instance was stored (PS3.18 10.5.3.1), whether or not the body lists them.
        stored = tuple(sent)
    else:
        stored = tuple(uid for uid in sent if uid in referenced)
        failed.update({uid: None for uid in sent if uid not in referenced and uid not in failed})
    ordered_failed = tuple((uid, failed[uid]) for uid in sent if uid in failed)
    return StoreOutcome(stored=stored, failed=ordered_failed, warnings=tuple(warnings))


def reason_meaning(code: int | None) -> str:
    """``0xA700`` -> ``"Refused: Out of Resources (0xA700)"``, from pynetdicom's status tables."""
    if code is None:
        return "no reason given"
    if code in OUT_OF_RESOURCES:
        meaning = STORAGE_SERVICE_CLASS_STATUS[0xA700][1]
    else:
        meaning = STORAGE_SERVICE_CLASS_STATUS.get(
            code, GENERAL_STATUS.get(code, ("", "unknown reason"))
        )[1]
    return f"{meaning} (0x{code:04X})"


def is_transient_reason(code: int | None) -> bool:
    return code is not None and (code in OUT_OF_RESOURCES or code == RESOURCE_LIMITATION)


def failure_error(
    endpoint: StowEndpoint, failed: Sequence[tuple[str, int | None]], *, of: int
) -> TransientError | DeliveryRefused:
    """The error for instances a destination did not store: transient only if all may heal."""
    shown = "; ".join(reason_meaning(code) for _, code in failed[:REASONS_SHOWN])
    more = f" (+{len(failed) - REASONS_SHOWN} more)" if len(failed) > REASONS_SHOWN else ""
    message = f"{endpoint} did not store {len(failed)} of {of} instances: {shown}{more}"
    if all(is_transient_reason(code) for _, code in failed):
        return TransientError(message)
    return DeliveryRefused(message)


def http_error(endpoint: StowEndpoint, response: httpx.Response) -> Exception | None:
    """The error an HTTP status means before any instance is looked at; None for 200/202/409."""
    code = response.status_code
    if code in (200, 202, 409):
        return None
    what = f"{endpoint} answered HTTP {code} {response.reason_phrase}".rstrip()
    if code >= 500 or code in TRANSIENT_HTTP:
        return TransientError(what)
    if code in (401, 403):
        return DeliveryRefused(f"{what}: check the device's token or user:password")
    if 300 <= code < 400:
        return DeliveryRefused(
            f"{what}: redirected elsewhere; set the device's STOW-RS URL to the final address"
        )
    if code == 404:
        return DeliveryRefused(f"{what}: no STOW-RS service at {endpoint}/studies")
    if code == 413:
        return DeliveryRefused(f"{what}: the destination takes smaller requests than petray's")
    return DeliveryRefused(what)


# -- sending -----------------------------------------------------------------------------------


def _client(endpoint: StowEndpoint, timeout_s: float) -> httpx.Client:
    try:
        verify = endpoint.verify()
    except ConfigurationError as exc:
        # Unusable CA or certificate files will not heal by retrying: staff must fix the device.
        raise DeliveryRefused(f"{endpoint}: {exc}") from None
    return httpx.Client(
        timeout=httpx.Timeout(timeout_s, connect=min(CONNECT_TIMEOUT_S, timeout_s)),
        verify=verify,
        auth=endpoint.auth(),
        headers=endpoint.headers(),
        follow_redirects=False,  # credentials must not follow a redirect to another host
        trust_env=False,  # no proxy or netrc from the environment: the device row says it all
    )


def _verification_failure(exc: BaseException) -> str | None:
    """Why the peer's certificate was not trusted, if that is why ``exc`` happened.

    httpx re-raises the ssl error as a ConnectError, not always chaining the original.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return str(current.verify_message or current.reason or "verification failed")
        current = current.__cause__ or current.__context__
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return text.split("certificate verify failed:", 1)[-1].split("(_ssl")[0].strip()
    return None


def _post(
    client: httpx.Client, endpoint: StowEndpoint, batch: Sequence[StowInstance]
) -> httpx.Response:
    boundary = new_boundary()
    headers = {
        "Content-Type": content_type(boundary),
        # A known length: some servers (and proxies) refuse chunked request bodies.
        "Content-Length": str(body_length(batch, boundary)),
    }
    try:
        return client.post(
            f"{endpoint.url}/studies", content=multipart_body(batch, boundary), headers=headers
        )
    except httpx.TimeoutException:
        raise TransientError(f"{endpoint} did not answer a STOW-RS request in time") from None
    except httpx.ConnectError as exc:
        if (untrusted := _verification_failure(exc)) is not None:
            # The same certificate is refused on every retry: staff must fix the device's CA.
            raise DeliveryRefused(f"{endpoint}: TLS certificate not trusted: {untrusted}") from None
        raise TransientError(f"cannot connect to {endpoint}: {exc}") from None
    except httpx.TransportError as exc:
        raise TransientError(f"STOW-RS request to {endpoint} failed: {exc}") from None
    except OSError as exc:
        # A file vanished between planning and sending.
        raise PermanentError(f"cannot send to {endpoint}: {exc.strerror or exc}") from None


def store_instances(
    endpoint: StowEndpoint,
    paths: Sequence[Path],
    *,
    skip_sop_uids: Collection[str] = (),
    on_sent: Callable[[str], None] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_instances: int = MAX_BATCH_INSTANCES,
    max_bytes: int = MAX_BATCH_BYTES,
) -> StowReport:
    """STOW-RS ``paths`` to ``endpoint`` in batches, in the order given.

    Instances whose SOP Instance UID is in ``skip_sop_uids`` are not sent again. After each
    request, ``on_sent(sop_instance_uid)`` runs for every instance the response acknowledged,
    before the next request, so a crash resends at most the batch in flight. Acknowledged
    instances are recorded even when others in the batch failed; then the failure is raised:
    ``TransientError`` (retry later) or ``DeliveryRefused`` (permanent).
    """
    started = time.monotonic()
    outgoing, skipped = plan(paths, skip_sop_uids)
    sent = requests = bytes_sent = 0
    warnings: list[tuple[str, str]] = []
    if outgoing:
        with _client(endpoint, timeout_s) as client:
            for batch in batches(outgoing, max_instances=max_instances, max_bytes=max_bytes):
                response = _post(client, endpoint, batch)
                requests += 1
                error = http_error(endpoint, response)
                if error is not None:
                    raise error
                uids = [item.sop_instance_uid for item in batch]
                outcome = parse_response(response.status_code, response.content, uids)
                for uid in outcome.stored:
                    if on_sent is not None:
                        on_sent(uid)
                sent += len(outcome.stored)
                stored = set(outcome.stored)
                bytes_sent += sum(item.size for item in batch if item.sop_instance_uid in stored)
                warnings += [(uid, reason_meaning(code)) for uid, code in outcome.warnings]
                if outcome.failed:
                    raise failure_error(endpoint, outcome.failed, of=len(batch))
    elapsed = time.monotonic() - started
    logger.info(
        "stored %d instances at %s in %.2f s over %d request(s) (%d skipped, %d warnings)",
        sent,
        endpoint,
        elapsed,
        requests,
        skipped,
        len(warnings),
    )
    return StowReport(
        endpoint,
        sent=sent,
        skipped=skipped,
        warnings=tuple(warnings),
        elapsed_s=elapsed,
        requests=requests,
        bytes_sent=bytes_sent,
    )
