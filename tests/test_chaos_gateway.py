"""Power cuts of the whole gateway (issue 8): ``petray start`` SIGKILLed — its process group, and
through its watchdog every Ray process of its run — in three stages of one task, restarted each
time on the same home. The task ends delivered, every acknowledged instance exactly once (DCMTK
storescp ``+uf`` keeps every copy it receives). bench/chaos.py runs the full matrix with the same
machinery.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import FILTERS, site
from petray.demo.synth import make_pet_series, write_series
from petray.ray_leftovers import find_run_processes, read_record, record_path

pytestmark = [pytest.mark.ray, pytest.mark.peers]


# Four gateway starts and a 20 s service job: 72 s on a quiet machine, up to 194 s beside the
# other test worker. Its own waits are bounded; the suite's 300 s guard would cut it short.
@pytest.mark.timeout(600)
def test_power_cuts_in_three_stages_lose_nothing_and_duplicate_nothing(tmp_path: Path) -> None:
    # storescp sleeps after each store, so the cut while sending lands between acknowledgements.
    with site(tmp_path, storescp_args=("--sleep-after", "1")) as s:
        files = write_series(make_pet_series(slices=6, rows=64, cols=64, seed=5), tmp_path / "in")
        s.gateway.start()
        s.control(delay=4.0)  # check_model answers late: the task sits in validating
        s.send(files)
        s.wait_for(lambda ts: ts[0].stage == "validating", "validating", 60)
        record = read_record(record_path(s.settings.home))
        assert record is not None
        s.gateway.power_cut()
        assert find_run_processes(record.run_id) == []  # nothing of the dead gateway runs on

        # The service works 20 s (longer than a gateway start): the cut lands in processing.
        s.control(delay=0.0, slow=20.0)
        s.gateway.start()
        s.wait_for(lambda ts: ts[0].stage == "processing", "processing", 120)
        s.gateway.power_cut()  # its callback is refused while the gateway is down

        s.control(slow=0.0)
        s.gateway.start()
        s.wait_for(
            lambda ts: ts[0].stage == "sending" and ts[0].destinations[0]["sent"] >= 2,
            "sending under way",
            120,
        )
        s.gateway.power_cut()

        s.gateway.start()
        tasks = s.wait_for(lambda ts: ts[0].state in ("done", "failed"), "the task to end", 180)
        assert len(tasks) == 1
        assert (tasks[0].stage, tasks[0].state) == ("done", "done"), tasks[0].reason
        expected = len(files) * len(FILTERS)
        uids = s.destination.sop_uids()
        assert len(set(uids)) == expected, "an instance was lost"
        # storescp sleeps after answering; the next instance, sent at once, waits complete in its
        # socket, and storescp stores it on waking although its answer can no longer reach the
        # dead gateway. C-STORE cannot tell that instance from one never stored, so it goes
        # again: at most that one (storescp serves one association at a time). A resume that
        # sent acknowledged instances again would repeat at least the two acknowledged before
        # the cut.
        assert len(uids) - expected <= 1, "an acknowledged instance was delivered twice"
