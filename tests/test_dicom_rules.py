"""One DICOM rule, one home (issue 14): every place that applies a rule gives the same answer."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from petray.demo.synth import make_pet_series
from petray.dicom.geometry import orientation_problem, slice_normal
from petray.dicom.header import extract_instance_header
from petray.errors import ConfigurationError, InvalidInstance, PermanentError, ValidationFailed
from petray.imaging import volume
from petray.settings import Settings
from petray.site.schemas import ListenerUpdate
from petray.site.siteconfig import validate_ae_title
from petray.stages.validation import build_processing_header


def _tilted(angle_error: float) -> list[float]:
    """Axial cosines whose column direction leans ``angle_error`` out of orthogonal."""
    return [1.0, 0.0, 0.0, math.sin(angle_error), math.cos(angle_error), 0.0]


@pytest.mark.parametrize(("error", "accepted"), [(0.0, True), (5e-3, True), (5e-2, False)])
def test_ingest_and_validation_apply_one_orientation_tolerance(
    error: float, accepted: bool
) -> None:
    ds = make_pet_series(slices=1, rows=8, cols=8)[0]
    ds.ImageOrientationPatient = _tilted(error)
    assert (orientation_problem(_tilted(error)) is None) is accepted
    if accepted:
        extract_instance_header(ds)
        build_processing_header(ds, slice_spacing_mm=2.0)
        return
    with pytest.raises(InvalidInstance, match="not orthogonal"):
        extract_instance_header(ds)
    with pytest.raises(ValidationFailed, match="not orthonormal"):
        build_processing_header(ds, slice_spacing_mm=2.0)


def test_one_slice_normal_for_headers_and_volumes() -> None:
    oblique = [0.8, 0.6, 0.0, 0.0, 0.0, -1.0]
    assert slice_normal(oblique) == pytest.approx((-0.6, 0.8, 0.0))
    assert volume.slice_normal(np.array(oblique)) == pytest.approx([-0.6, 0.8, 0.0])
    with pytest.raises(ValueError, match="degenerate"):
        slice_normal([1, 0, 0, 1, 0, 0])
    with pytest.raises(PermanentError, match="degenerate"):
        volume.slice_normal([1, 0, 0, 1, 0, 0])


@pytest.mark.parametrize("title", ["", "A" * 17, "BACK\\SLASH", "TAB\tAE", "ÄRZTE"])
def test_settings_site_config_and_api_refuse_the_same_ae_titles(title: str, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="AE title"):
        Settings(home=tmp_path, ae_title=title)
    with pytest.raises(ConfigurationError, match="AE title"):
        validate_ae_title(title)
    with pytest.raises(ValidationError, match="AE title"):
        ListenerUpdate(ae_title=title, dicom_port=11112)


def test_an_ae_title_loses_its_padding_everywhere(tmp_path: Path) -> None:
    assert Settings(home=tmp_path, ae_title=" PETRAY ").ae_title == "PETRAY"
    assert validate_ae_title("PETRAY ") == "PETRAY"
    assert ListenerUpdate(ae_title=" PETRAY", dicom_port=104).ae_title == "PETRAY"
