"""The reference service's jobs: one processing thread and one callback thread.

Callbacks run on their own thread so that a petray that is down (and retried with backoff) never
holds up the denoising of the next archive. Jobs are keyed by task id, which is what makes
``POST /processing`` idempotent.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from http import HTTPStatus
from typing import Any

import httpx

from serve.reference.archive import InputRejected, ResultSpec, read_upload, write_result
from serve.reference.config import ReferenceConfig, SwitchBoard
from serve.reference.denoise import ALGORITHM_NAME, ALGORITHM_VERSION, guided_denoise

logger = logging.getLogger(__name__)

_POLL_S = 0.2
_WAKE = ""  # never a task id (the routes only accept hex task ids)


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class CallbackState(StrEnum):
    NONE = "none"
    PENDING = "pending"
    SENT = "sent"
    DROPPED = "dropped"  # the drop_callback switch was on
    REJECTED = "rejected"  # petray answered a 4xx; retrying cannot help
    FAILED = "failed"  # petray unreachable after every attempt


@dataclass
class Job:
    task_id: str
    client_id: str
    state: JobState = JobState.QUEUED
    error: str = ""
    submissions: int = 1
    runs: int = 0
    callback: CallbackState = CallbackState.NONE
    callback_attempts: int = 0
    callback_status: int | None = None
    malicious: str | None = None
    seconds: float | None = None
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)

    def public(self) -> dict[str, Any]:
        return asdict(self)


class Worker:
    """Owns the job table and the two threads; ``start``/``stop`` follow the app's lifespan."""

    def __init__(
        self,
        config: ReferenceConfig,
        switches: SwitchBoard,
        *,
        callback_transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._config = config
        self._switches = switches
        self._callback_transport = callback_transport
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._work: queue.Queue[str] = queue.Queue()
        self._callbacks: queue.Queue[str] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._busy = 0

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if self._threads:
                return
            self._stop.clear()
            self._threads = [
                threading.Thread(target=self._process_loop, name="ref-worker", daemon=True),
                threading.Thread(
                    target=self._callback_loop, name="reference-callback", daemon=True
                ),
            ]
            for thread in self._threads:
                thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        # Wake both threads now instead of after their next poll.
        self._work.put(_WAKE)
        self._callbacks.put(_WAKE)
        with self._lock:
            threads, self._threads = self._threads, []
        for thread in threads:
            thread.join(timeout_s)

    # -- API used by the routes ------------------------------------------------------------
    def submit(self, *, task_id: str, client_id: str) -> Job:
        """Queue a job for ``to_process/{task_id}.zip`` unless one is queued, running or done.

        A done job whose result is still in ``processed/`` only gets its callback again (petray
        re-sent the task, so it may have missed the first one); a failed job, or a done job whose
        result is gone, runs again.
        """
        self.start()
        with self._lock:
            job = self._jobs.get(task_id)
            if job is None:
                job = self._jobs[task_id] = Job(task_id=task_id, client_id=client_id)
                self._work.put(task_id)
                return job
            job.submissions += 1
            job.updated = time.time()
            result_exists = (self._config.processed_dir / f"{task_id}.zip").exists()
            if job.state is JobState.FAILED or (job.state is JobState.DONE and not result_exists):
                job.state, job.error = JobState.QUEUED, ""
                self._work.put(task_id)
            elif job.state is JobState.DONE and job.callback is not CallbackState.PENDING:
                job.callback = CallbackState.PENDING
                self._callbacks.put(task_id)
            return job

    def jobs(self) -> list[dict[str, Any]]:
        with self._lock:
            return [job.public() for job in self._jobs.values()]

    def job(self, task_id: str) -> dict[str, Any] | None:
        with self._lock:
            job = self._jobs.get(task_id)
            return job.public() if job else None

    def wait_idle(self, timeout_s: float) -> bool:
        """True once no job is queued or running and no callback is pending (for tests)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                idle = (
                    self._busy == 0
                    and self._work.empty()
                    and self._callbacks.empty()
                    and all(
                        j.state in (JobState.DONE, JobState.FAILED)
                        and j.callback is not CallbackState.PENDING
                        for j in self._jobs.values()
                    )
                )
            if idle:
                return True
            time.sleep(0.05)
        return False

    # -- processing ------------------------------------------------------------------------
    def _update(self, task_id: str, **changes: Any) -> None:
        with self._lock:
            job = self._jobs[task_id]
            for name, value in changes.items():
                setattr(job, name, value)
            job.updated = time.time()

    def _process_loop(self) -> None:
        while not self._stop.is_set():
            try:
                task_id = self._work.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if task_id == _WAKE:
                continue
            with self._lock:
                self._busy += 1
            try:
                self._process(task_id)
            except Exception:
                # A bug must not kill the only worker thread; the job records it instead.
                logger.exception("reference job %s crashed", task_id)
                self._update(task_id, state=JobState.FAILED, error="internal error")
            finally:
                with self._lock:
                    self._busy -= 1

    def _process(self, task_id: str) -> None:
        switches = self._switches.current
        self._update(task_id, state=JobState.RUNNING)
        started = time.perf_counter()
        if switches.slow and self._stop.wait(switches.slow):
            return
        source = self._config.to_process_dir / f"{task_id}.zip"
        try:
            upload = read_upload(source, task_id=task_id, max_bytes=self._config.max_input_bytes)
        except InputRejected as exc:
            logger.warning("task %s rejected: %s", task_id, exc)
            self._update(task_id, state=JobState.FAILED, error=str(exc))
            return
        denoised = guided_denoise(upload.volume, self._config.denoise)
        noise = upload.volume - denoised
        spec = ResultSpec(
            task_id=task_id,
            algorithm=ALGORITHM_NAME,
            algorithm_version=ALGORITHM_VERSION,
            compress_level=self._config.compress_level,
            malicious=switches.malicious,
            oversized_bytes=switches.oversized_bytes,
        )
        # The upload in to_process/ belongs to petray's task: the protocol lets only petray
        # delete it ("each side deletes only the files of its own tasks").
        write_result(self._config.processed_dir, spec, denoised, noise)
        seconds = time.perf_counter() - started
        with self._lock:
            job = self._jobs[task_id]
            job.state, job.seconds, job.runs = JobState.DONE, round(seconds, 3), job.runs + 1
            job.malicious = switches.malicious.value if switches.malicious else None
            job.callback = CallbackState.PENDING
            job.updated = time.time()
        logger.info("task %s processed in %.1f s", task_id, seconds)
        self._callbacks.put(task_id)

    # -- callbacks -------------------------------------------------------------------------
    def _callback_loop(self) -> None:
        with httpx.Client(
            timeout=self._config.callback_timeout_s,
            transport=self._callback_transport,
            headers={"Authorization": f"Bearer {self._config.callback_token}"},
            follow_redirects=False,
        ) as client:
            while not self._stop.is_set():
                try:
                    task_id = self._callbacks.get(timeout=_POLL_S)
                except queue.Empty:
                    continue
                if task_id == _WAKE:
                    continue
                with self._lock:
                    self._busy += 1
                try:
                    self._call_back(client, task_id)
                finally:
                    with self._lock:
                        self._busy -= 1

    def _call_back(self, client: httpx.Client, task_id: str) -> None:
        if self._switches.current.drop_callback:
            logger.info("task %s: callback dropped by switch", task_id)
            self._update(task_id, callback=CallbackState.DROPPED)
            return
        config = self._config
        for attempt in range(config.callback_attempts):
            self._update(task_id, callback_attempts=attempt + 1)
            try:
                response = client.post(config.callback_url, json={"task_id": task_id})
            except httpx.TransportError as exc:
                logger.info("task %s: callback attempt %d failed: %s", task_id, attempt + 1, exc)
            else:
                status = response.status_code
                if status == HTTPStatus.OK:
                    self._update(task_id, callback=CallbackState.SENT, callback_status=status)
                    return
                if status < HTTPStatus.INTERNAL_SERVER_ERROR:
                    logger.warning("task %s: petray refused the callback (%d)", task_id, status)
                    self._update(task_id, callback=CallbackState.REJECTED, callback_status=status)
                    return
                self._update(task_id, callback_status=status)
            if attempt + 1 < config.callback_attempts and self._stop.wait(
                config.callback_backoff.delay(attempt)
            ):
                return
        logger.warning("task %s: petray unreachable, callback given up", task_id)
        self._update(task_id, callback=CallbackState.FAILED)
