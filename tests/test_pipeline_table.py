"""The pipeline table (issue 14): the order, the actors and the records all come from it."""

from __future__ import annotations

from typing import Any

from petray.domain import Stage
from petray.stages.pipeline import (
    PIPELINE,
    PIPELINE_ACTORS,
    RESUMABLE_STAGES,
    SPECS,
    STAGE_ACTORS,
    STAGE_ORDER,
    STORE_SCP,
    UPLOADER,
    next_stage,
    stages_of,
    writer_of,
)
from petray.stages.records import Packed, Quant, Validated


def test_following_next_from_the_first_stage_visits_every_stage_once() -> None:
    visited = [PIPELINE[0].stage]
    while visited[-1] != Stage.DONE:
        visited.append(next_stage(visited[-1]))
    assert tuple(visited) == STAGE_ORDER
    # The vocabulary (a task's stage column) and the table agree on the order.
    assert tuple(Stage) == STAGE_ORDER


def test_the_uploader_owns_uploading_and_watches_processing() -> None:
    assert stages_of(UPLOADER) == (Stage.UPLOADING, Stage.PROCESSING)
    assert STAGE_ACTORS[Stage.PROCESSING] == UPLOADER


def test_the_compilator_rebuilds_its_tasks_and_every_other_stage_is_resumed() -> None:
    assert Stage.COMPILING not in RESUMABLE_STAGES
    assert frozenset(STAGE_ORDER[1:-1]) == RESUMABLE_STAGES


def test_each_record_is_written_before_it_is_read() -> None:
    order = list(STAGE_ORDER)
    # Read by: the Packer and the Uploader (Validated), the Unpacker (Packed, Quant).
    assert order.index(writer_of(Validated)) < order.index(Stage.PACKING)
    assert order.index(writer_of(Packed)) < order.index(Stage.UNPACKING)
    assert order.index(writer_of(Quant)) < order.index(Stage.UNPACKING)


def test_the_actors_follow_the_table() -> None:
    from actors.pipeline import ACTOR_CLASSES

    assert PIPELINE_ACTORS[0] == STORE_SCP
    assert list(ACTOR_CLASSES) == list(PIPELINE_ACTORS)
    for name, actor_class in ACTOR_CLASSES.items():
        worker: Any = actor_class.__ray_metadata__.modified_class
        stage = getattr(worker, "stage", None)
        if stage is not None:  # a stage worker: the table's actor for its stage is itself
            assert STAGE_ACTORS[stage] == name, name
            assert stage in SPECS
