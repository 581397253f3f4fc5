"""One gateway per home and database, and no Ray leftovers after a dead gateway (issue 8).

Ray-free: the holders, the "gateway" and the "Ray processes" here are small real processes, each
started by the test and killed only by pid or by a process group the test created.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from petray.gateway_lock import GatewayAlreadyRunning, acquire_gateway_lock
from petray.ray_leftovers import (
    RUN_MARKER,
    GatewayRecord,
    find_run_processes,
    new_record,
    reap_previous_run,
    record_path,
    write_record,
)

BOUND_S = 15.0
REPO = Path(__file__).resolve().parents[1]


def _until(condition: Callable[[], bool], what: str, bound_s: float = BOUND_S) -> None:
    deadline = time.monotonic() + bound_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start processes in sessions of their own; SIGKILL whatever of them is left at the end."""
    started: list[subprocess.Popen[str]] = []

    def _spawn(args: list[str], **kwargs: object) -> subprocess.Popen[str]:
        process: subprocess.Popen[str] = subprocess.Popen(
            args, start_new_session=True, text=True, **kwargs
        )
        started.append(process)
        return process

    yield _spawn
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def _holder(
    spawn: Callable[..., subprocess.Popen[str]], home: Path, db: str
) -> subprocess.Popen[str]:
    """A process holding the gateway lock until it is killed."""
    code = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from petray.gateway_lock import acquire_gateway_lock
        lock = acquire_gateway_lock(Path({str(home)!r}), {db!r})
        print("locked", flush=True)
        time.sleep(300)
        """
    )
    process = spawn([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE)
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "locked"
    return process


def test_a_second_holder_is_refused_until_the_first_is_killed(
    tmp_path: Path, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    home = tmp_path / "home"
    db = f"sqlite:///{home / 'petray.db'}"
    holder = _holder(spawn, home, db)
    with pytest.raises(GatewayAlreadyRunning) as refused:
        acquire_gateway_lock(home, db)
    assert str(refused.value) == (
        f"another gateway is running on {home} (pid {holder.pid}); stop it first"
    )
    holder.send_signal(signal.SIGKILL)  # the kernel drops a flock with its holder
    holder.wait(timeout=10)
    with acquire_gateway_lock(home, db) as lock:
        assert lock.held
    assert not lock.held
    # Released by the block: the next holder gets it at once.
    acquire_gateway_lock(home, db).release()


def test_petray_start_on_a_locked_home_exits_2_with_one_line(
    tmp_path: Path, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    home = tmp_path / "home"
    holder = _holder(spawn, home, f"sqlite:///{home / 'petray.db'}")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PETRAY_", "RAY_ADDRESS"))},
        "PETRAY_HOME": str(home),
    }
    result = subprocess.run(
        [sys.executable, "-m", "petray.cli", "start"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"petray: another gateway is running on {home} (pid {holder.pid}); stop it first"
    ]
    assert "petray running" not in result.stdout


@pytest.mark.postgres
def test_postgres_advisory_lock_refuses_a_gateway_with_another_home(
    tmp_path: Path, postgres_url: str, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    holder = _holder(spawn, tmp_path / "first", postgres_url)
    with pytest.raises(GatewayAlreadyRunning) as refused:
        acquire_gateway_lock(tmp_path / "second", postgres_url)
    message = str(refused.value)
    assert message.startswith("another gateway is running on database postgresql")
    assert f"pid {holder.pid})" in message and message.endswith("; stop it first")
    # The home lock of the refused start is not left behind.
    acquire_gateway_lock(tmp_path / "second", "sqlite://").release()
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)

    # The server ends the dead holder's session when its socket closes.
    def _free() -> bool:
        try:
            acquire_gateway_lock(tmp_path / "second", postgres_url).release()
        except GatewayAlreadyRunning:
            return False
        return True

    _until(_free, "PostgreSQL to release the dead holder's advisory lock")


def _sleeper(
    spawn: Callable[..., subprocess.Popen[str]], *, run_id: str | None, title: str = "sleeper"
) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != RUN_MARKER}
    if run_id is not None:
        env[RUN_MARKER] = run_id
    return spawn([sys.executable, "-c", "import time; time.sleep(300)", title], env=env)


def test_run_processes_are_the_tagged_their_descendants_and_ray_files_holders(
    tmp_path: Path, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    run_id = new_record().run_id
    session = tmp_path / "session_x"
    (session / "logs").mkdir(parents=True)
    tagged = _sleeper(spawn, run_id=run_id)
    other_run = _sleeper(spawn, run_id="another-run")
    untagged = _sleeper(spawn, run_id=None)
    # A child started with an environment of its own, as the raylet starts Ray's agents.
    parent = spawn(
        ["sh", "-c", f"env -u {RUN_MARKER} sleep 300 & echo $!; wait"],
        env={**os.environ, RUN_MARKER: run_id},
        stdout=subprocess.PIPE,
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    holds = "import sys, time; f = open(sys.argv[1], 'w'); print(1, flush=True); time.sleep(300)"
    # Ray's agents and workers replace their command line with a title such as "ray::X".
    agent_log = session / "logs" / "agent.log"
    ray_agent = spawn(
        ["bash", "-c", f'exec -a ray::FakeAgent "{sys.executable}" -c "{holds}" {agent_log}'],
        stdout=subprocess.PIPE,
    )
    reader = spawn(  # an operator's tail of a log is not Ray's
        [sys.executable, "-c", holds, str(session / "logs" / "tail.log")], stdout=subprocess.PIPE
    )
    for process in (ray_agent, reader):
        assert process.stdout is not None and process.stdout.readline().strip() == "1"

    _until(lambda: tagged.pid in find_run_processes(run_id), "the tagged process to show")
    found = set(find_run_processes(run_id, str(session)))
    assert {tagged.pid, parent.pid, child, ray_agent.pid} <= found
    assert not {other_run.pid, untagged.pid, reader.pid, os.getpid()} & found
    assert ray_agent.pid not in find_run_processes(run_id)  # without the session directory


def test_the_next_start_reaps_what_the_recorded_run_left(
    tmp_path: Path, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    record = new_record(pid=999_999)
    write_record(record_path(home), record)
    leftover = _sleeper(spawn, run_id=record.run_id)
    bystander = _sleeper(spawn, run_id=None)
    _until(lambda: leftover.pid in find_run_processes(record.run_id), "the leftover to show")

    assert reap_previous_run(home) == [leftover.pid]
    assert leftover.wait(timeout=BOUND_S) == -signal.SIGKILL
    assert bystander.poll() is None
    assert reap_previous_run(home) == []  # nothing left: nothing done, nothing logged


FAKE_GATEWAY = """
import os, subprocess, sys, time
from pathlib import Path
from petray.ray_leftovers import RUN_MARKER, new_record, record_path, write_record
from petray.watchdog import Watchdog

home = Path(sys.argv[1])
record = new_record()
write_record(record_path(home), record)
watchdog = Watchdog.start(run_id=record.run_id, record=record_path(home))
# Like Ray's actors: tagged, each in a process group (here a session) of its own.
actors = [
    subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)", "ray::FakeActor"],
        env={**os.environ, RUN_MARKER: record.run_id},
        start_new_session=True,
    )
    for _ in range(3)
]
print(watchdog.process.pid, *(actor.pid for actor in actors), flush=True)
if sys.argv[2] == "stop":
    for actor in actors:
        actor.kill()
        actor.wait()
    watchdog.stop()
else:
    time.sleep(300)
"""


def _fake_gateway(
    spawn: Callable[..., subprocess.Popen[str]], home: Path, mode: str
) -> tuple[subprocess.Popen[str], int, list[int]]:
    home.mkdir(exist_ok=True)
    gateway = spawn(
        [sys.executable, "-c", FAKE_GATEWAY, str(home), mode],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert gateway.stdout is not None
    watchdog, *actors = (int(pid) for pid in gateway.stdout.readline().split())
    return gateway, watchdog, actors


def test_watchdog_kills_the_run_when_the_gateway_group_is_killed(
    tmp_path: Path, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    bystander = _sleeper(spawn, run_id=None, title="ray::SomeoneElsesActor")
    gateway, watchdog, actors = _fake_gateway(spawn, tmp_path / "home", "sleep")
    assert all(_alive(pid) for pid in (watchdog, *actors))

    started = time.monotonic()
    os.killpg(gateway.pid, signal.SIGKILL)  # the group this test started, and only it
    gateway.wait(timeout=10)
    _until(lambda: not any(_alive(pid) for pid in actors), "the watchdog to kill the actors")
    elapsed = time.monotonic() - started
    _until(lambda: not _alive(watchdog), "the watchdog to exit")
    assert bystander.poll() is None
    assert gateway.stderr is not None
    assert "the gateway (pid" in gateway.stderr.read()
    assert elapsed < 5, f"{elapsed:.1f} s"


def test_watchdog_leaves_quietly_after_a_clean_stop(
    tmp_path: Path, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    gateway, watchdog, _actors = _fake_gateway(spawn, tmp_path / "home", "stop")
    assert gateway.wait(timeout=BOUND_S) == 0
    _until(lambda: not _alive(watchdog), "the watchdog to exit")
    assert gateway.stderr is not None
    assert gateway.stderr.read() == ""


def test_record_round_trip(tmp_path: Path) -> None:
    from petray.ray_leftovers import read_record

    path = record_path(tmp_path)
    assert read_record(path) is None
    record = GatewayRecord(pid=12, host="h", run_id="r", started_at=1.0, session_dir="/tmp/s")
    write_record(path, record)
    assert read_record(path) == record
    path.write_text("{not json")
    assert read_record(path) is None
