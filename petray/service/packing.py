"""What goes into the upload archive's metadata.json besides the array description.

Only de-identified fields: the processing header's metadata (dates already shifted per task),
the task id and the site id. The mapping back to the patient stays in petray's database.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def upload_metadata(
    processing: Mapping[str, Any], *, task_id: str, client_id: str
) -> dict[str, Any]:
    return {**processing, "task_id": task_id, "client_id": client_id}
