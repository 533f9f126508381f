"""ostracker: OS processes as jobs — the DRMAA2 OS process JobTracker, with a CLI.

The public names are loaded on first use, so that the reaper and the CLI pay
only for the modules they need (``import ostracker.reaper`` must stay light).
"""

__version__ = "0.1.0"

_EXPORTS = {
    "JobTracker": "tracker",
    "JobTemplate": "models",
    "JobInfo": "models",
    "JobState": "models",
    "ArraySpec": "models",
    "TrackerError": "errors",
    "InvalidArgument": "errors",
    "JobNotFound": "errors",
    "InvalidState": "errors",
    "UnsupportedOperation": "errors",
    "StartError": "errors",
    "StorageError": "errors",
    "WaitTimeout": "errors",
    "SlurmUnavailable": "errors",
    "PermissionDenied": "errors",
    "MonitoringSession": "monitor",
    "SlurmTracker": "slurm_backend",
    "SlurmMonitoringSession": "slurm_backend",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name):
    if name in _EXPORTS:
        from importlib import import_module

        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'ostracker' has no attribute {name!r}")
