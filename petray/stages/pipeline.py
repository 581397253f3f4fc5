"""The pipeline as one table (issue 14): each stage, the record it leaves, its actor, what follows.

The order of the stages, the actor that owns each one (its mailbox), which actors take up
which tasks when they (re)start, and where an operator's retry sends a task are all read from
``PIPELINE``; nothing else spells them out. The actor classes live in ``actors/`` and are keyed
by these names there (``actors/pipeline.py`` checks that every name has one).
"""

from __future__ import annotations

from dataclasses import dataclass

from petray.domain import Stage
from petray.stages.records import Packed, Quant, StageRecord, Validated

STORE_SCP = "petray.store_scp"
COMPILATOR = "petray.compilator"
VALIDATOR = "petray.validator"
PACKER = "petray.packer"
UPLOADER = "petray.uploader"
DOWNLOADER = "petray.downloader"
UNPACKER = "petray.unpacker"
STORE_SCU = "petray.store_scu"


@dataclass(frozen=True)
class StageSpec:
    stage: Stage
    # The named actor whose mailbox takes the stage's tasks.
    actor: str
    # What the stage leaves on the task for the later ones (records.py).
    records: tuple[type[StageRecord], ...]
    next: Stage
    # Taken up from the database whenever its actor (re)starts; the Compilator's tasks are
    # rebuilt from its assemblies instead.
    resumable: bool = True


PIPELINE: tuple[StageSpec, ...] = (
    StageSpec(Stage.COMPILING, COMPILATOR, (), Stage.VALIDATING, resumable=False),
    StageSpec(Stage.VALIDATING, VALIDATOR, (Validated,), Stage.PACKING),
    StageSpec(Stage.PACKING, PACKER, (Packed, Quant), Stage.UPLOADING),
    StageSpec(Stage.UPLOADING, UPLOADER, (), Stage.PROCESSING),
    # The Uploader also watches the processing deadline; the callback moves the task on.
    StageSpec(Stage.PROCESSING, UPLOADER, (), Stage.DOWNLOADING),
    StageSpec(Stage.DOWNLOADING, DOWNLOADER, (), Stage.UNPACKING),
    # The Unpacker adds each derived series' numbers and the verdict to the Quant record.
    StageSpec(Stage.UNPACKING, UNPACKER, (Quant,), Stage.SENDING),
    StageSpec(Stage.SENDING, STORE_SCU, (), Stage.DONE),
)

SPECS: dict[Stage, StageSpec] = {spec.stage: spec for spec in PIPELINE}

# Every task stage in order, the final one last.
STAGE_ORDER: tuple[Stage, ...] = (*(spec.stage for spec in PIPELINE), Stage.DONE)
# The actor that owns each stage.
STAGE_ACTORS: dict[Stage, str] = {spec.stage: spec.actor for spec in PIPELINE}
# The stages an actor takes up from the database when it (re)starts.
RESUMABLE_STAGES: frozenset[Stage] = frozenset(spec.stage for spec in PIPELINE if spec.resumable)
# The actors of the stages, each once, in pipeline order; the Store SCP feeds the first.
STAGE_ACTOR_NAMES: tuple[str, ...] = tuple(dict.fromkeys(spec.actor for spec in PIPELINE))
PIPELINE_ACTORS: tuple[str, ...] = (STORE_SCP, *STAGE_ACTOR_NAMES)


def next_stage(stage: Stage) -> Stage:
    spec = SPECS.get(stage)
    if spec is None:
        raise ValueError(f"{stage} is the last stage")
    return spec.next


def stages_of(actor: str) -> tuple[Stage, ...]:
    """The stages whose tasks ``actor`` takes up when it (re)starts."""
    return tuple(spec.stage for spec in PIPELINE if spec.actor == actor and spec.resumable)


def writer_of(record: type[StageRecord]) -> Stage:
    """The first stage that leaves ``record``: a retry that needs it again starts there."""
    return next(spec.stage for spec in PIPELINE if record in spec.records)
