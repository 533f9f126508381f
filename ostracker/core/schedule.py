"""What a waiting job waits for, as every backend reads it: queue names, begin times,
dependencies (README, "Scheduling").

Parsed once, at submit, into the forms the template keeps (a queue name, an
ISO 8601 time, a normalized dependency text); a dependency is evaluated
against the states of the jobs it names, the same way wherever it is asked.
"""

from __future__ import annotations

import re

from .errors import InvalidArgument
from .models import JobState, brief, int_of_digits, parse_job_id

NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
DEPENDENCY_TYPES = ("after", "afterany", "afterok", "afternotok")
_WAITING = frozenset({JobState.QUEUED, JobState.QUEUED_HELD, JobState.REQUEUED,
                      JobState.REQUEUED_HELD})
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_PRIORITY = 10 ** 9


def parse_name(text: str, what: str = "queue") -> str:
    """The name of a queue (or a job session): letters, digits, ``_ . -``, at most 64, not
    starting with ``.`` or ``-`` (it names a file)."""
    if not NAME.fullmatch(text):
        raise InvalidArgument(f"bad {what} name {brief(text)!r}: use letters, digits, _ . - "
                              "(at most 64, not first . or -)")
    return text


def parse_priority(text: str) -> int:
    """An integer from -MAX_PRIORITY to MAX_PRIORITY; higher starts first."""
    if not re.fullmatch(r"[+-]?[0-9]{1,10}", text) or abs(int(text)) > MAX_PRIORITY:
        raise InvalidArgument(f"bad priority {brief(text)!r}: expected a whole number from "
                              f"-{MAX_PRIORITY:,} to {MAX_PRIORITY:,}")
    return int(text)


# -- times ------------------------------------------------------------------------------

def parse_time_spec(text: str, now=None, past: bool = False):
    """TIME as ``--begin`` takes it, as an aware datetime (README, "Scheduling").

    ``now+N[s|m|h|d]`` (seconds without a unit), ``HH:MM[:SS]`` (today, or
    tomorrow once that has passed), ``YYYY-MM-DD[THH:MM[:SS]]`` (local time),
    or ISO 8601 with a UTC offset.  With ``past``, also ``-N[s|m|h|d]``: that
    long ago (``status --since``).
    """
    from datetime import datetime, timedelta

    now = now or datetime.now().astimezone()
    spec = text.strip()
    relative = re.fullmatch(r"now\+([0-9]{1,9})([smhd]?)", spec) or \
        (re.fullmatch(r"-([0-9]{1,9})([smhd]?)", spec) if past else None)
    if relative:
        seconds = int(relative.group(1)) * _UNITS[relative.group(2) or "s"]
        sign = -1 if spec.startswith("-") else 1
        return now + timedelta(seconds=sign * seconds)
    if spec == "now":
        return now
    clock = re.fullmatch(r"([0-9]{1,2}):([0-9]{2})(?::([0-9]{2}))?", spec)
    try:
        if clock:
            hour, minute, second = (int(part or 0) for part in clock.groups())
            moment = now.replace(hour=hour, minute=minute, second=second, microsecond=0)
            return moment + timedelta(days=1) if moment <= now and not past else moment
        if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}(?:[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}"
                        r"(?:\.[0-9]{1,6})?)?)?(?:Z|[+-][0-9]{2}:?[0-9]{2})?", spec):
            moment = datetime.fromisoformat(spec.replace("Z", "+00:00"))
            if moment.tzinfo is None:
                moment = moment.astimezone()  # local time, as Slurm reads it
            if 1900 <= moment.year <= 9998:
                return moment
    except (ValueError, OverflowError):
        pass
    raise InvalidArgument(f"bad time {brief(text)!r}: expected now+N[s|m|h|d], HH:MM[:SS], "
                          "YYYY-MM-DD[THH:MM[:SS]] or ISO 8601 with a UTC offset" +
                          (", or -N[s|m|h|d]" if past else ""))


def time_text(moment) -> str:
    """A datetime as records write times: UTC, microseconds, ``+00:00``."""
    from datetime import timezone

    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


# -- dependencies -----------------------------------------------------------------------

class Dependency:
    """``TYPE:ID[:ID...]`` items joined by ``,`` (all must hold) or ``?`` (any one must)."""

    __slots__ = ("items", "any")

    def __init__(self, items: list[tuple[str, list[str]]], any_one: bool):
        self.items = items
        self.any = any_one

    def __str__(self) -> str:
        return ("?" if self.any else ",").join(f"{kind}:{':'.join(ids)}"
                                               for kind, ids in self.items)

    def job_ids(self) -> list[str]:
        return [job_id for _, ids in self.items for job_id in ids]

    def evaluate(self, states_of) -> tuple[str, str]:
        """("met" | "wait" | "never", what it waits for or why it can never be met).

        ``states_of(ID)`` gives the states of the tasks that the ID names (one
        for a single job or a task, each task's for an array), or None when the
        job no longer exists (deleted: it had ended, how is not known).
        """
        verdicts = []
        for kind, ids in self.items:
            for job_id in ids:
                verdict, why = _judge(kind, states_of(job_id))
                verdicts.append((verdict, f"{kind}:{job_id}" + (f" ({job_id} {why})"
                                                                if why else "")))
        never = [text for verdict, text in verdicts if verdict == "never"]
        waiting = [text.split(" (")[0] for verdict, text in verdicts if verdict == "wait"]
        if self.any:
            if any(verdict == "met" for verdict, _ in verdicts):
                return "met", ""
            if not waiting:
                return "never", "?".join(never)
            return "wait", "?".join(waiting)
        if never:
            return "never", ",".join(never)
        if waiting:
            return "wait", ",".join(waiting)
        return "met", ""


def _judge(kind: str, states) -> tuple[str, str]:
    """One item's verdict for the states of the tasks its ID names."""
    if states is None:
        return ("met", "") if kind in ("after", "afterany") else ("never", "deleted")
    if kind == "after":
        return ("wait", "") if any(state in _WAITING for state in states) else ("met", "")
    ended = [state for state in states if state.ended]
    failed = next((state for state in ended if state is not JobState.DONE), None)
    if kind == "afterok" and failed is not None:
        return "never", failed.value
    if len(ended) < len(states):
        return "wait", ""
    if kind == "afternotok" and failed is None:
        return "never", "Done"
    return "met", ""


def parse_dependency(text: str) -> Dependency:
    """Slurm's ``--dependency`` syntax, for the types ostracker knows; usage error otherwise."""
    if "," in text and "?" in text:
        raise InvalidArgument(f"bad dependency {brief(text)!r}: use , (all) or ? (any), "
                              "not both")
    any_one = "?" in text
    items = []
    for part in text.split("?" if any_one else ","):
        kind, _, rest = part.partition(":")
        ids = rest.split(":") if rest else []
        if kind not in DEPENDENCY_TYPES or not ids:
            raise InvalidArgument(f"bad dependency {brief(text)!r}: expected TYPE:ID[:ID...] "
                                  f"items, TYPE one of {', '.join(DEPENDENCY_TYPES)}")
        if len(ids) > 1000:
            raise InvalidArgument(f"bad dependency {brief(text)!r}: too many IDs")
        for job_id in ids:
            parse_job_id(job_id)  # a usage error if malformed
        items.append((kind, [_canonical(job_id) for job_id in ids]))
    return Dependency(items, any_one)


def _canonical(job_id: str) -> str:
    """``007.03`` -> ``7.3``: the ID as ostracker prints it."""
    job, dot, task = job_id.partition(".")
    return f"{int_of_digits(job)}{'.' + str(int_of_digits(task)) if dot else ''}"
