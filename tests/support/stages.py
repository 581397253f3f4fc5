"""A series through the Validating and Packing stages' own functions, as their actors call them
(no Ray, no database): the input of the later stages' unit tests."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import dcmread

from petray.imaging.decay import read_slice_decays
from petray.imaging.volume import PetVolume, load_series_volume
from petray.site.radiopharm import SEED_RADIOPHARMACEUTICALS
from petray.stages.pack import pack
from petray.stages.records import Packed, Quant
from petray.stages.validate import Validation, validate


@dataclass(frozen=True)
class PackedSeries:
    validation: Validation
    packed: Packed
    quant: Quant
    volume: PetVolume

    @property
    def received(self) -> np.ndarray:
        return self.volume.data


def validate_and_pack(
    files: Sequence[Path], archive: Path, *, task_id: str, client_id: str = "site"
) -> PackedSeries:
    volume = load_series_volume(files)
    first = dcmread(files[0], stop_before_pixels=True)
    validation = validate(
        task_id,
        first,
        slice_spacing_mm=volume.spacing_zyx[0],
        slice_decays=read_slice_decays(files),
        table=SEED_RADIOPHARMACEUTICALS,
        require_patient_weight=False,
        client_id=client_id,
    )
    packed, quant = pack(
        volume.data,
        spacing_zyx=volume.spacing_zyx,
        slice_paths=volume.slice_paths,
        first_header=first,
        validated=validation.record,
        task_id=task_id,
        client_id=client_id,
        archive=archive,
        compresslevel=1,
    )
    return PackedSeries(validation, packed, quant, volume)
