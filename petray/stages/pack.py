"""The Packing stage's work: the series' volume into the upload archive, and its numbers.

Pure over the volume it is given (a read-only view; the Packer actor hands it over zero-copy
from the object store): no database, no Ray. Writes only ``archive``.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from petray.imaging.quant import ActivityMetrics, body_threshold, measure
from petray.imaging.suv import suv_scale
from petray.service.archive import peak_magnitude, write_upload_archive
from petray.service.packing import upload_metadata
from petray.stages.records import Packed, Quant, Validated
from petray.stages.review import received_record


def pack(
    volume: np.ndarray,
    *,
    spacing_zyx: Sequence[float],
    slice_paths: Sequence[Path],
    first_header: Dataset,
    validated: Validated,
    task_id: str,
    client_id: str,
    archive: Path,
    compresslevel: int,
) -> tuple[Packed, Quant]:
    """Write ``archive`` (``{task_id}.npy`` + ``metadata.json``, de-identified) and return what
    later stages need: the Packer's record and the quantitative check's reference."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    metadata = upload_metadata(validated.processing, task_id=task_id, client_id=client_id)
    # The volume's numbers are measured while the archive is compressed and hashed (zlib,
    # sha256 and numpy's reductions release the GIL): the two overlap on a second core.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="petray-quant") as pool:
        numbers = pool.submit(_received_numbers, volume, spacing_zyx)
        sha256 = write_upload_archive(
            archive,
            task_id=task_id,
            volume=volume,
            voxel_spacing_zyx=spacing_zyx,
            metadata=metadata,
            compresslevel=compresslevel,
        )
        threshold, metrics, peak = numbers.result()
    scale = suv_scale(first_header, half_life_s=validated.processing.get("HalfLife"))
    quant = received_record(
        metrics, suv_factor=scale.factor, suv_reason=scale.reason, body_threshold=threshold
    )
    z, y, x = volume.shape
    dz, dy, dx = (float(v) for v in spacing_zyx)
    packed = Packed(
        archive=str(archive),
        sha256=sha256,
        shape=(z, y, x),
        spacing_zyx=(dz, dy, dx),
        input_peak=peak,
        slice_paths=tuple(str(p) for p in slice_paths),
    )
    return packed, quant


def _received_numbers(
    volume: np.ndarray, spacing_zyx: Sequence[float]
) -> tuple[float, ActivityMetrics, float]:
    """The body mask's threshold, the received volume's metrics and its peak magnitude."""
    threshold = body_threshold(volume)
    metrics = measure(volume, spacing_zyx, body_threshold_bqml=threshold)
    return threshold, metrics, peak_magnitude(volume)
