"""A job's limits as every backend reads them: durations, sizes, resource limits, signals
(README, "Limits and retries").

Parsed once, at submit, into what the template keeps: seconds, bytes, counts,
signal names.  DRMAA2 names the resource limits; each maps to one setrlimit
resource of the job's processes, except WALLCLOCK_TIME, which is ``--time``.
"""

from __future__ import annotations

import re

from .errors import InvalidArgument
from .models import brief

# DRMAA2 ResourceLimits key -> (setrlimit resource name, kind of value)
RESOURCE_LIMITS = {
    "CORE_FILE_SIZE": ("RLIMIT_CORE", "size"),
    "CPU_TIME": ("RLIMIT_CPU", "time"),
    "DATA_SIZE": ("RLIMIT_DATA", "size"),
    "FILE_SIZE": ("RLIMIT_FSIZE", "size"),
    "OPEN_FILES": ("RLIMIT_NOFILE", "count"),
    "STACK_SIZE": ("RLIMIT_STACK", "size"),
    "VIRTUAL_MEMORY": ("RLIMIT_AS", "size"),
    "WALLCLOCK_TIME": (None, "time"),
}
MAX_SECONDS = 10 ** 9  # about 31 years
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZES = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_duration(text: str) -> int:
    """A DURATION in seconds: Slurm's ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``,
    ``D-HH:MM``, ``D-HH:MM:SS`` (a bare number is minutes, as in Slurm), or a number
    with a unit: ``90s``, ``15m``, ``2h``, ``1d``.  Usage error otherwise, or if 0."""
    spec = text.strip()
    seconds = None
    unit = re.fullmatch(r"([0-9]{1,10})([smhd])", spec)
    slurm = re.fullmatch(r"(?:([0-9]{1,5})-)?([0-9]{1,9})(?::([0-9]{1,2}))?(?::([0-9]{1,2}))?",
                         spec)
    if unit:
        seconds = int(unit.group(1)) * _UNITS[unit.group(2)]
    elif slurm:
        days, first, second, third = slurm.groups()
        if days is not None:  # D-HH[:MM[:SS]]
            seconds = int(days) * 86400 + int(first) * 3600 + int(second or 0) * 60 + \
                int(third or 0)
        elif third is not None:  # HH:MM:SS
            seconds = int(first) * 3600 + int(second) * 60 + int(third)
        elif second is not None:  # MM:SS
            seconds = int(first) * 60 + int(second)
        else:  # MM
            seconds = int(first) * 60
    if seconds is None or not 0 < seconds <= MAX_SECONDS:
        raise InvalidArgument(f"bad duration {brief(text)!r}: expected MM, MM:SS, HH:MM:SS, "
                              "D-HH[:MM[:SS]] (a bare number is minutes) or N[s|m|h|d], "
                              "more than 0 and at most 31 years")
    return seconds


def parse_size(text: str) -> int:
    """A size in bytes: digits and an optional K, M, G or T (powers of 1024)."""
    match = re.fullmatch(r"([0-9]{1,15})([kKmMgGtT]?)[bB]?", text.strip())
    if not match:
        raise InvalidArgument(f"bad size {brief(text)!r}: expected a number of bytes, "
                              "optionally with K, M, G or T")
    return int(match.group(1)) * _SIZES[match.group(2).lower()]


def parse_limit(text: str) -> tuple[str, int]:
    """``NAME=VALUE`` of ``--limit``: (the DRMAA2 key, seconds, bytes or a count)."""
    name, sep, value = text.partition("=")
    key = name.strip().upper()
    if not sep or key not in RESOURCE_LIMITS:
        raise InvalidArgument(f"bad limit {brief(text)!r}: expected NAME=VALUE, NAME one of "
                              f"{', '.join(RESOURCE_LIMITS)}")
    kind = RESOURCE_LIMITS[key][1]
    if kind == "time":
        return key, parse_duration(value)
    if kind == "size":
        return key, parse_size(value)
    if not re.fullmatch(r"[0-9]{1,10}", value.strip()):
        raise InvalidArgument(f"bad limit {brief(text)!r}: {key} takes a whole number")
    return key, int(value)


def signal_number(text: str) -> int:
    """A signal given as ``TERM``, ``SIGTERM`` or a number, as its number; usage error if
    there is no such signal."""
    import signal

    spec = text.strip().upper()
    if spec.isdigit() and len(spec) < 4:
        number = int(spec)
        if number in set(signal.valid_signals()) and number > 0:
            return number
    else:
        name = spec if spec.startswith("SIG") else f"SIG{spec}"
        found = getattr(signal.Signals, name, None) if name.isidentifier() else None
        if isinstance(found, signal.Signals):
            return int(found)
    raise InvalidArgument(f"bad signal {brief(text)!r}: expected a name such as TERM, "
                          "SIGUSR1, or a number")


def signal_name(number: int) -> str:
    import signal

    try:
        return signal.Signals(number).name
    except ValueError:
        return f"SIG{number}"


def parse_warning(text: str) -> str:
    """``SIG[@SEC]`` of ``--signal`` as the template keeps it: ``NAME@SEC``, the signal's
    name and the seconds before the limit (60 by default, as Slurm's)."""
    name, sep, seconds = text.partition("@")
    if sep and not re.fullmatch(r"[0-9]{1,6}", seconds):
        raise InvalidArgument(f"bad --signal {brief(text)!r}: expected SIG[@SEC]")
    return f"{signal_name(signal_number(name))}@{int(seconds) if sep else 60}"


def parse_retries(text: str) -> int:
    """``--retries N``: 0, or a whole number of 1 or more (``models.parse_count``)."""
    from .models import parse_count

    return 0 if text.isdigit() and not text.strip("0") else parse_count(text)


def check_on_end(command: str) -> str:
    """``--on-end CMD``: any shell command, but an empty one (or one holding NUL)."""
    if not command.strip() or "\0" in command:
        raise InvalidArgument("cannot be empty")
    return command
