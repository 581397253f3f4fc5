"""The error hierarchy shared by every stage; small and picklable so it can cross actor boundaries.

Errors are translated only at the edges: a DICOM status, an HTTP status, or a task failure row.
"""

from __future__ import annotations


class PetrayError(Exception):
    """Base of every petray error. ``str(err)`` is a human-readable reason without patient data."""


class ConfigurationError(PetrayError):
    """Settings or site configuration are invalid; fix the configuration, do not retry."""


class TransientError(PetrayError):
    """May succeed later (peer down, timeout, 5xx); retried with backoff."""


class PermanentError(PetrayError):
    """Fails the same way every time: the task fails with this reason, never retried in a loop."""


class InvalidInstance(PermanentError):
    """A received DICOM instance lacks what petray needs or is not decodable."""


class ValidationFailed(PermanentError):
    """A task cannot be processed (header, radiopharmaceutical, destination, licence)."""


class RemoteRefused(ValidationFailed):
    """The remote service refused the task with a licence or algorithm status (405/406/407)."""

    def __init__(self, status_code: int, reason: str) -> None:
        super().__init__(reason)
        self.status_code = status_code

    def __reduce__(self) -> tuple[type, tuple[int, str]]:
        return (type(self), (self.status_code, str(self)))


class ArchiveRejected(PermanentError):
    """A result archive is unsafe or does not match the task (shape, dtype, NaN, links, size)."""


class DeliveryRefused(PermanentError):
    """A DICOM destination refused the series permanently."""


class UnknownTask(PetrayError):
    """No task has this id."""


class InvalidTransition(PetrayError):
    """The task is not in a stage or state that allows the requested change."""
