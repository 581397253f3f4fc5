"""Image-plane geometry of a DICOM slice (PS3.3 C.7.6.2): the one home of these rules.

Ingest, validation, volume assembly and the MIP previews all check an orientation and find the
slice normal here, with one tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# Direction cosines from real scanners are unit vectors to a few decimals; anything further off
# means a broken header, not rounding.
ORIENTATION_TOLERANCE = 1e-2


def orientation_problem(cosines: Sequence[float]) -> str | None:
    """Why six ImageOrientationPatient values are not a pair of orthonormal directions."""
    if len(cosines) != 6:
        return "direction cosines must be six numbers"
    row, col = cosines[:3], cosines[3:]
    for vector in (row, col):
        if abs(math.sqrt(sum(c * c for c in vector)) - 1.0) > ORIENTATION_TOLERANCE:
            return "direction cosines are not unit vectors"
    if abs(sum(r * c for r, c in zip(row, col, strict=True))) > ORIENTATION_TOLERANCE:
        return "row and column directions are not orthogonal"
    return None


def slice_normal(orientation: Sequence[float]) -> tuple[float, float, float]:
    """Unit normal of the image plane: row direction x column direction (PS3.3 C.7.6.2.1.1);
    ``ValueError`` when the two directions are (nearly) parallel."""
    rx, ry, rz, cx, cy, cz = (float(v) for v in orientation)
    nx, ny, nz = ry * cz - rz * cy, rz * cx - rx * cz, rx * cy - ry * cx
    norm = math.sqrt(nx * nx + ny * ny + nz * nz)
    if norm < 0.5:  # unit, orthogonal cosines give 1; this is not an orientation at all
        raise ValueError("ImageOrientationPatient is degenerate (row and column not orthogonal)")
    return (nx / norm, ny / norm, nz / norm)
