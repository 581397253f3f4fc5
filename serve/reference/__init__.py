"""petray's reference implementation of the remote processing service (REMOTE_PROTOCOL.md).

A standalone FastAPI/uvicorn app, not part of the Ray Serve deployment: it stands in for the
vendor's service so the whole chain runs on one machine, and it can misbehave on demand for tests.
"""
