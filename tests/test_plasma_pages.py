"""A process lets go of object-store pages it has consumed (actors/plasma.py, issue 13).

On the shared local Ray: a volume put into the object store and read back is a view into the
store's shared mapping; releasing it lowers this process's resident set and leaves the data as
it was. Anything else (private memory, a writable or owning array) is never touched, since
madvise(MADV_DONTNEED) would zero private pages.
"""

from __future__ import annotations

import numpy as np
import pytest
import ray

from actors.plasma import release_pages
from petray.imaging.filters import FilterSpec, apply_post_filter

pytestmark = pytest.mark.ray
MIB = 2**20


def _shmem_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssShmem:"):
                return int(line.split()[1])
    raise AssertionError("no RssShmem in /proc/self/status")


def test_a_consumed_object_store_view_leaves_the_resident_set_and_keeps_its_data(
    ray_cluster: None,
) -> None:
    volume = np.arange(32 * 512 * 512, dtype=np.float32).reshape(32, 512, 512)
    expected = float(volume.sum(dtype=np.float64))
    view = ray.get(ray.put(volume))
    assert not view.flags.writeable and not view.flags.owndata
    assert float(view.sum(dtype=np.float64)) == expected  # every page touched
    before = _shmem_kb()
    released = release_pages(view)
    assert released >= volume.nbytes - 2 * 4096
    assert before - _shmem_kb() >= 24 * 1024  # most of its 32 MiB left this process
    assert float(view.sum(dtype=np.float64)) == expected  # read again: faulted back unchanged


def test_private_memory_is_never_released() -> None:
    private = np.arange(4 * 512 * 512, dtype=np.float32).reshape(4, 512, 512)
    expected = private.copy()
    assert release_pages(private) == 0  # writable and owning its data
    read_only = private.view()
    read_only.flags.writeable = False  # looks like an object-store view, but is private
    assert release_pages(read_only) == 0
    np.testing.assert_array_equal(private, expected)


def test_the_filter_hands_back_every_input_slice_and_its_result_is_unchanged() -> None:
    rng = np.random.default_rng(3)
    denoised = rng.random((37, 12, 10)).astype(np.float32)
    noise = rng.random((37, 12, 10)).astype(np.float32) - 0.5
    spec = FilterSpec(id=1, description="g", series_number=901, fwhm_mm=6.0, noise_pct=20)
    consumed: list[np.ndarray] = []
    out = apply_post_filter(denoised, noise, spec, (2.0, 2.0, 2.0), done_with=consumed.append)
    plain = apply_post_filter(denoised, noise, spec, (2.0, 2.0, 2.0))
    np.testing.assert_array_equal(out, plain)
    slices = sum(len(slab) for slab in consumed)
    assert slices == 2 * 37  # each slice of both inputs, once
    assert all(
        np.shares_memory(slab, denoised) or np.shares_memory(slab, noise) for slab in consumed
    )
