"""The one door from the core up to the Ray layer and the reference service (issue 14).

Nothing else in ``petray/`` imports ``actors`` or ``serve`` (ruff's TID251 enforces it). The
commands that run them (``petray start``, ``petray demo``, ``petray reference-server``) import
this module inside the command, so every other command starts without Ray or FastAPI.
"""

from __future__ import annotations

from actors.gateway import Gateway
from serve.reference.main import run_reference_server, running_reference

__all__ = ["Gateway", "run_reference_server", "running_reference"]
