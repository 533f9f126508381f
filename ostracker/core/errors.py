"""The one family of exceptions that ostracker raises.

Callers (the CLI above all) map each class to an exit status, so the class says
*what kind* of failure it is and the message says, in one line, what happened.
"""


class TrackerError(Exception):
    """Base of every error ostracker raises on purpose (exit status 1)."""

    exit_status = 1


class InvalidArgument(TrackerError):
    """The caller asked for something malformed: a usage error (exit status 2)."""

    exit_status = 2


class JobNotFound(TrackerError):
    """No job with that ID exists in this state directory."""


class InvalidState(TrackerError):
    """The job exists but its state does not allow the operation."""


class UnsupportedOperation(TrackerError):
    """The backend cannot do this (the local backend: hold and release; one task: delete)."""


class SlurmUnavailable(TrackerError):
    """Slurm's commands are missing, or its controller does not answer."""


class PermissionDenied(TrackerError):
    """Slurm refused an operation to this user (scontrol suspend is for operators)."""


class StartError(TrackerError):
    """The job could not be started; the message names the cause."""


class StorageError(TrackerError):
    """The job DB could not be read or written (full disk, bad permissions, damage)."""


class WaitTimeout(TrackerError):
    """``wait`` ran out of time before the jobs ended (exit status 124)."""

    exit_status = 124
