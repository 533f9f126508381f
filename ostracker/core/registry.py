"""Backends by name: the one place that knows which package runs which backend.

The CLI, completion and the Python API open trackers and monitoring sessions
only through here, and import a backend's package only when it is asked for:
a local command never loads the Slurm backend, nor Slurm's ``subprocess``.

Adding a backend is one package (``ostracker/NAME/`` with a tracker, a
subclass of ``core.base.TrackerBase``, and a monitoring session) and one line
in ``BACKENDS`` (README, "How to add a backend").
"""

from __future__ import annotations

from importlib import import_module

from .errors import InvalidArgument, StorageError

# name -> (module, JobTracker class, module, MonitoringSession class)
BACKENDS = {
    "local": ("ostracker.local.tracker", "JobTracker",
              "ostracker.local.monitor", "MonitoringSession"),
    "slurm": ("ostracker.slurm.tracker", "SlurmTracker",
              "ostracker.slurm.monitor", "SlurmMonitoringSession"),
}
DEFAULT = "local"
# name -> (module, function) that the ``ostracker`` command calls, on a submit, before
# it loads the CLI (the local backend starts the job's reaper then: ``local.standby``)
BEFORE_SUBMIT = {"local": ("ostracker.local.standby", "start")}


def names() -> list[str]:
    return list(BACKENDS)


def _entry(backend: str | None) -> tuple[str, str, str, str]:
    try:
        return BACKENDS[backend or DEFAULT]
    except KeyError:
        raise InvalidArgument(f"unknown backend {backend!r} (choose from "
                              f"{', '.join(BACKENDS)})") from None


def tracker_class(backend: str | None = None) -> type:
    """The JobTracker class of ``backend`` (default: local)."""
    module, name, _, _ = _entry(backend)
    return getattr(import_module(module), name)


def open_tracker(backend: str | None = None, state_dir: str | None = None):
    """A JobTracker of ``backend`` over the state directory ``state_dir``.

    A relative state directory (``state_dir`` or ``$OSTRACKER_STATE_DIR``) is
    relative to the current directory; if that has been deleted, the path
    cannot be resolved (``os.getcwd()`` fails): a StorageError that says so.
    """
    cls = tracker_class(backend)
    try:
        return cls(state_dir)
    except FileNotFoundError:
        import os

        try:
            os.getcwd()
        except FileNotFoundError:
            where = state_dir or os.environ.get("OSTRACKER_STATE_DIR") or "(default)"
            raise StorageError(f"cannot use state directory {where}: the current directory, "
                               "which it is relative to, no longer exists") from None
        raise


def before_submit(backend: str | None = None) -> None:
    """What ``backend`` does ahead of a submit, while the CLI loads (``BEFORE_SUBMIT``)."""
    hook = BEFORE_SUBMIT.get(backend or DEFAULT)
    if hook is not None:
        getattr(import_module(hook[0]), hook[1])()


def monitoring_session(backend: str | None = None):
    """A DRMAA2 MonitoringSession of ``backend``: every process, or every job of the cluster."""
    _, _, module, name = _entry(backend)
    return getattr(import_module(module), name)()
