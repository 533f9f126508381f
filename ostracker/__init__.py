"""ostracker: OS processes as jobs — the DRMAA2 OS process JobTracker, with a CLI.

The public names are loaded on first use, so that the reaper and the CLI pay
only for the modules they need (``import ostracker.local.reaper`` must stay light).
"""

__version__ = "0.1.0"

_EXPORTS = {
    "JobTracker": "local.tracker",
    "JobTemplate": "core.models",
    "JobInfo": "core.models",
    "JobState": "core.models",
    "ArraySpec": "core.models",
    "TrackerError": "core.errors",
    "InvalidArgument": "core.errors",
    "JobNotFound": "core.errors",
    "InvalidState": "core.errors",
    "UnsupportedOperation": "core.errors",
    "StartError": "core.errors",
    "StorageError": "core.errors",
    "WaitTimeout": "core.errors",
    "SlurmUnavailable": "core.errors",
    "PermissionDenied": "core.errors",
    "MonitoringSession": "local.monitor",
    "SlurmTracker": "slurm.tracker",
    "SlurmMonitoringSession": "slurm.monitor",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name):
    if name in _EXPORTS:
        from importlib import import_module

        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'ostracker' has no attribute {name!r}")
