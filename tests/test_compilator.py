"""Series assembly and readiness, pure: time is an argument, so nothing here sleeps."""

from __future__ import annotations

import random
from collections.abc import Iterable

import pytest

from petray.demo.synth import make_pet_series
from petray.dicom.header import extract_instance_header
from petray.dicom.ingest import ReceivedInstance
from petray.stages.compilator import (
    Compilation,
    CompilatorConfig,
    Decision,
    SeriesAssembly,
    Verdict,
)

CONFIG = CompilatorConfig(
    min_images=10, slice_gap_tolerance=1.5, inactivity_wait_s=5.0, abort_timeout_s=600.0
)
T0 = 1_700_000_000.0  # wall-clock seconds, as the Compilator actor uses
SPACING_MM = 3.0


def received(
    index: int,
    *,
    position: float | None = None,
    sop_uid: str | None = None,
    number_of_slices: int | None = None,
    calling_ae: str = "SCANNER",
    series_pk: int = 1,
) -> ReceivedInstance:
    return ReceivedInstance(
        instance_pk=index + 1,
        series_pk=series_pk,
        sop_instance_uid=sop_uid or f"1.2.826.0.1.3680043.2.{index + 1}",
        slice_position=position if position is not None else index * SPACING_MM,
        number_of_slices=number_of_slices,
        calling_ae=calling_ae,
        peer_host="127.0.0.1",
    )


def assembled(instances: Iterable[ReceivedInstance], *, at: float = T0) -> SeriesAssembly:
    items = list(instances)
    first = items[0]
    assembly = SeriesAssembly(
        task_id="task-1",
        series_pk=first.series_pk,
        calling_ae=first.calling_ae,
        peer_host=first.peer_host,
        last_activity=at,
    )
    for item in items:
        assembly.add(item, at)
    return assembly


def series(count: int, *, skip: Iterable[int] = (), nslices: int | None = None) -> SeriesAssembly:
    missing = set(skip)
    return assembled(
        received(i, number_of_slices=nslices) for i in range(count) if i not in missing
    )


# --- with NumberOfSlices ---


def test_complete_series_with_number_of_slices_is_ready_at_once() -> None:
    decision = series(47, nslices=47).decide(CONFIG, T0)
    assert decision == Decision(Verdict.READY)


def test_shuffled_arrival_changes_nothing() -> None:
    items = [received(i, number_of_slices=20) for i in range(20)]
    random.Random(3).shuffle(items)
    assembly = assembled(items)
    assert assembly.images == 20
    assert assembly.decide(CONFIG, T0).verdict == Verdict.READY


def test_expected_count_reached_below_the_minimum_aborts_after_the_quiet_period() -> None:
    assembly = series(6, nslices=6)
    # A NumberOfSlices that may be lying gets the quiet period to be contradicted.
    assert assembly.decide(CONFIG, T0 + 1.0).verdict == Verdict.WAIT
    decision = assembly.decide(CONFIG, T0 + CONFIG.inactivity_wait_s)
    assert decision.verdict == Verdict.ABORT
    assert "6 images" in decision.reason
    assert "NumberOfSlices 6" in decision.reason
    assert "minimum 10" in decision.reason


def test_more_images_than_number_of_slices_says_are_kept_together_by_geometry() -> None:
    # Issue 8: NumberOfSlices=12 on 24 slices of one series must not give two half volumes.
    assembly = series(24, nslices=12)
    assert assembly.images == 24
    assert assembly.expected is None
    assert "NumberOfSlices says 12" in assembly.contradiction
    assert assembly.decide(CONFIG, T0 + 1.0).verdict == Verdict.WAIT
    assert assembly.decide(CONFIG, T0 + CONFIG.inactivity_wait_s).verdict == Verdict.READY


def test_a_number_of_slices_below_the_minimum_is_contradicted_by_the_rest() -> None:
    assembly = series(5, nslices=5)
    assert assembly.decide(CONFIG, T0 + 1.0).verdict == Verdict.WAIT
    for index in range(5, 24):
        assembly.add(received(index, number_of_slices=5), T0 + 2.0)
    assert assembly.contradiction
    assert assembly.decide(CONFIG, T0 + 2.0 + CONFIG.inactivity_wait_s).verdict == Verdict.READY


def test_a_doomed_assembly_gathers_then_aborts_with_its_reason() -> None:
    assembly = series(12, nslices=12)
    assembly.doomed = "the rest of a series already dispatched"
    assert assembly.decide(CONFIG, T0 + 1.0).verdict == Verdict.WAIT
    late = assembly.decide(CONFIG, T0 + CONFIG.inactivity_wait_s)
    assert (late.verdict, late.reason) == (Verdict.ABORT, "the rest of a series already dispatched")


def test_missing_expected_images_wait_until_the_abort_timeout() -> None:
    assembly = series(47, skip={10}, nslices=47)
    early = assembly.decide(CONFIG, T0 + 1.0)
    assert early.verdict == Verdict.WAIT
    assert "expected" in early.reason
    assert early.recheck_in == pytest.approx(CONFIG.abort_timeout_s - 1.0)
    # Inactivity alone never completes a series whose size the scanner told us.
    assert assembly.decide(CONFIG, T0 + 60.0).verdict == Verdict.WAIT
    late = assembly.decide(CONFIG, T0 + CONFIG.abort_timeout_s)
    assert late.verdict == Verdict.ABORT
    assert "46 of 47 images" in late.reason
    assert "600 s" in late.reason


def test_largest_number_of_slices_wins() -> None:
    assembly = assembled([received(0, number_of_slices=12), *(received(i) for i in range(1, 11))])
    assert assembly.expected == 12
    assert assembly.decide(CONFIG, T0 + 100).verdict == Verdict.WAIT


# --- without NumberOfSlices: contiguity after a quiet period ---


def test_without_number_of_slices_waits_while_receiving() -> None:
    decision = series(30).decide(CONFIG, T0 + 2.0)
    assert decision.verdict == Verdict.WAIT
    assert decision.reason == "receiving"
    assert decision.recheck_in == pytest.approx(3.0)


def test_contiguous_series_is_ready_after_the_quiet_period() -> None:
    assembly = series(30)
    assert assembly.decide(CONFIG, T0 + CONFIG.inactivity_wait_s).verdict == Verdict.READY


def test_a_new_instance_restarts_the_quiet_period() -> None:
    assembly = series(30)
    assembly.add(received(30), T0 + 4.0)
    decision = assembly.decide(CONFIG, T0 + 6.0)
    assert decision.verdict == Verdict.WAIT
    assert decision.recheck_in == pytest.approx(3.0)


def test_gap_wider_than_the_tolerance_keeps_waiting_with_the_reason() -> None:
    decision = series(30, skip={10}).decide(CONFIG, T0 + 10.0)
    assert decision.verdict == Verdict.WAIT
    assert "gap of 6.0 mm" in decision.reason
    assert "spacing 3.0 mm" in decision.reason
    assert decision.recheck_in == pytest.approx(CONFIG.abort_timeout_s - 10.0)


def test_gap_within_the_tolerance_is_accepted() -> None:
    # Whole-body PET may have slightly uneven spacing at bed overlaps.
    positions = [i * SPACING_MM for i in range(20)] + [19 * SPACING_MM + 4.0]
    assembly = assembled(received(i, position=p) for i, p in enumerate(positions))
    assert assembly.decide(CONFIG, T0 + 10.0).verdict == Verdict.READY


def test_gap_series_aborts_after_the_timeout_with_a_clear_reason() -> None:
    decision = series(30, skip={10, 11}).decide(CONFIG, T0 + CONFIG.abort_timeout_s + 1)
    assert decision.verdict == Verdict.ABORT
    assert decision.reason.startswith("incomplete series aborted after 601 s without new images")
    assert "gap of 9.0 mm" in decision.reason


def test_too_few_images_without_number_of_slices_waits_then_aborts() -> None:
    assembly = series(5)
    waiting = assembly.decide(CONFIG, T0 + 10.0)
    assert waiting.verdict == Verdict.WAIT
    assert "5 images, fewer than the minimum 10" in waiting.reason
    aborted = assembly.decide(CONFIG, T0 + CONFIG.abort_timeout_s)
    assert aborted.verdict == Verdict.ABORT
    assert "fewer than the minimum 10" in aborted.reason


def test_abort_wins_over_the_quiet_period() -> None:
    # A configuration where the abort timeout is shorter than the inactivity wait still aborts.
    config = CompilatorConfig(
        min_images=10, slice_gap_tolerance=1.5, inactivity_wait_s=60.0, abort_timeout_s=30.0
    )
    assert series(30, skip={3}).decide(config, T0 + 30.0).verdict == Verdict.ABORT


def test_recheck_in_is_never_negative_nor_beyond_the_abort_timeout() -> None:
    for assembly in (series(30), series(30, skip={4}), series(40, nslices=47), series(3)):
        for idle in (0.0, 1.0, 4.99, 5.0, 100.0, 599.0):
            decision = assembly.decide(CONFIG, T0 + idle)
            if decision.verdict != Verdict.WAIT:
                assert decision.recheck_in is None
                continue
            assert decision.recheck_in is not None
            assert 0 < decision.recheck_in <= CONFIG.abort_timeout_s
            # After waiting that long, the verdict changes or the wait is for the abort.
            later = assembly.decide(CONFIG, T0 + idle + decision.recheck_in)
            assert later != decision


def test_readiness_depends_on_interior_gaps_only_whatever_the_order() -> None:
    # A property check without hypothesis (not installed): many random series and arrivals.
    rng = random.Random(20250302)
    for _ in range(200):
        slices = rng.randint(CONFIG.min_images + 3, 60)
        interior = range(1, slices - 1)
        missing = set(rng.sample(interior, rng.choice([0, 0, 1, 2, 3])))
        items = [received(i) for i in range(slices) if i not in missing]
        rng.shuffle(items)
        decision = assembled(items).decide(CONFIG, T0 + CONFIG.inactivity_wait_s)
        if missing:
            assert decision.verdict == Verdict.WAIT, (slices, missing)
            assert decision.reason.startswith("gap of"), decision.reason
        else:
            assert decision.verdict == Verdict.READY, (slices, missing)


# --- routing ---


def test_route_joins_the_open_assembly_of_the_same_series_and_sender() -> None:
    compilation = Compilation()
    assembly = assembled([received(0)])
    compilation.open(assembly)
    assert compilation.route(received(1)) is assembly
    assert compilation.get("task-1") is assembly
    assert len(compilation) == 1


def test_repeated_sop_instance_uid_routes_to_a_new_assembly() -> None:
    compilation = Compilation()
    first = assembled([received(i) for i in range(5)])
    compilation.open(first)
    resend = received(2)
    assert compilation.route(resend) is None
    second = SeriesAssembly("task-2", 1, "SCANNER", "127.0.0.1", T0)
    second.add(resend, T0)
    compilation.open(second)
    # The next copy of an instance only the first assembly holds joins the second one.
    assert compilation.route(received(3)) is second
    # A third copy of the same instance needs a third task.
    assert compilation.route(received(2)) is None


def test_two_senders_of_the_same_series_get_separate_assemblies() -> None:
    compilation = Compilation()
    compilation.open(assembled([received(0, calling_ae="SCANNER")]))
    assert compilation.route(received(1, calling_ae="PACS")) is None
    assert compilation.route(received(1, calling_ae="SCANNER")) is not None


def test_another_series_from_the_same_sender_is_not_routed() -> None:
    compilation = Compilation()
    compilation.open(assembled([received(0, series_pk=1)]))
    assert compilation.route(received(1, series_pk=2)) is None


def test_close_forgets_the_assembly() -> None:
    compilation = Compilation()
    first = assembled([received(0)])
    compilation.open(first)
    compilation.close(first.task_id)
    compilation.close("no-such-task")
    assert len(compilation) == 0
    assert list(compilation) == []
    assert compilation.route(received(1)) is None


# --- with real synthetic headers ---


def synth_instances(**overrides: object) -> list[ReceivedInstance]:
    datasets = make_pet_series(rows=8, cols=8, **overrides)
    out = []
    for index, ds in enumerate(datasets):
        header = extract_instance_header(ds)
        out.append(
            ReceivedInstance(
                instance_pk=index + 1,
                series_pk=1,
                sop_instance_uid=header.sop_instance_uid,
                slice_position=header.slice_position,
                number_of_slices=header.number_of_slices,
                calling_ae="SCANNER",
                peer_host="127.0.0.1",
            )
        )
    return out


@pytest.mark.parametrize("vendor", ["siemens", "ge"])
def test_synthetic_series_with_number_of_slices_is_ready(vendor: str) -> None:
    assembly = assembled(synth_instances(slices=24, vendor=vendor))
    assert assembly.expected == 24
    assert assembly.decide(CONFIG, T0).verdict == Verdict.READY


def test_synthetic_series_missing_a_slice_waits_for_it_then_aborts() -> None:
    assembly = assembled(synth_instances(slices=24, drop=frozenset({10})))
    assert assembly.decide(CONFIG, T0 + 10).verdict == Verdict.WAIT
    aborted = assembly.decide(CONFIG, T0 + CONFIG.abort_timeout_s)
    assert aborted.verdict == Verdict.ABORT
    assert "23 of 24 images" in aborted.reason


def test_synthetic_series_without_number_of_slices_is_ready_when_contiguous() -> None:
    instances = synth_instances(slices=24, number_of_slices=False)
    assert all(i.number_of_slices is None for i in instances)
    assembly = assembled(instances)
    assert assembly.decide(CONFIG, T0 + 1).verdict == Verdict.WAIT
    assert assembly.decide(CONFIG, T0 + CONFIG.inactivity_wait_s).verdict == Verdict.READY


def test_synthetic_series_with_a_dropped_slice_shows_the_gap() -> None:
    assembly = assembled(synth_instances(slices=24, number_of_slices=False, drop=frozenset({10})))
    decision = assembly.decide(CONFIG, T0 + CONFIG.inactivity_wait_s)
    assert decision.verdict == Verdict.WAIT
    assert "gap of 6.0 mm" in decision.reason


def test_synthetic_resend_of_a_whole_series_opens_a_second_task() -> None:
    instances = synth_instances(slices=12)
    compilation = Compilation()
    first = assembled(instances)
    compilation.open(first)
    assert all(compilation.route(item) is None for item in instances)
