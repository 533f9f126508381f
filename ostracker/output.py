"""Rendering for people and scripts: tables, key/value lines, JSON, durations, progress.

The only module that imports tabulate, and only when a table is drawn.
"""

from __future__ import annotations

import json
import re

from .core.models import JobInfo, human_size

# -- what a terminal must not get raw ------------------------------------------------------

# A control character in a job's name, command or arguments would break a table
# row (a newline adds a row) or drive the terminal (ESC starts a sequence that
# can move the cursor, retitle the window, ...).  Every table and ``key: value``
# line shows them escaped, and a backslash as ``\\``, so that the escaped text
# reads back unambiguously: ``\e`` ESC, ``\n``, ``\t``, ``\r``; ``\xNN`` any
# other C0 control or DEL, and a byte that is not UTF-8 (which Python carries as
# a lone surrogate); ``\uNNNN`` the C1 controls (U+0080-U+009F: 0x9B is CSI on
# some terminals), the line and paragraph separators and the bidirectional
# overrides and isolates (which reorder what follows them).  JSON needs none of
# this: json.dumps escapes all of it already.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\\\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\x1b": "\\e", "\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\"}


def _escaped(match) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    if code < 0x80 or 0xDC80 <= code <= 0xDCFF:  # C0, DEL; a byte os.fsdecode could not
        return f"\\x{code & 0xFF:02x}"
    return f"\\u{code:04x}"


def escape(text: str) -> str:
    """``text`` with nothing in it that a terminal acts on (see ``_UNSAFE``) and no newline."""
    return text if _UNSAFE.search(text) is None else _UNSAFE.sub(_escaped, text)


def one_line(message: str) -> str:
    """An error message as one harmless line: control characters escaped, backslashes kept.

    Messages quote what they name with repr() already, whose backslashes must not double.
    """
    if _UNSAFE.search(message) is None:
        return message
    return _UNSAFE.sub(lambda m: m.group() if m.group() == "\\" else _escaped(m), message)


def _cells(rows: list[list]) -> list[list[str]]:
    """Every cell of a table as escaped text."""
    return [[escape(str(cell)) for cell in row] for row in rows]


def duration(seconds: float | None) -> str:
    """``42.0s``, ``3m07s``, ``1h02m``, ``2d03h``: short and sortable by eye."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    minutes, secs = divmod(whole, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s"


def local_time(moment) -> str:
    return "-" if moment is None else moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def command_line(info: JobInfo) -> str:
    import shlex

    return shlex.join([info.job_template.remote_command, *info.job_template.args])


def exit_column(info: JobInfo) -> str:
    """The exit status, or the signal that ended it; "never ran" for a job that ended
    without starting (could not start, cancelled, a dependency never met)."""
    if info.exit_status is not None:
        return str(info.exit_status)
    if info.terminating_signal:
        return info.terminating_signal
    return "never ran" if info.state.ended and info.dispatch_time_text is None else "-"


def job_table(infos: list[JobInfo]) -> str:
    """The ``status`` table: one row per single job or array task."""
    rows = [[info.id, info.job_name, info.state.value, exit_column(info),
             "-" if info.pid is None else info.pid, local_time(info.dispatch_time),
             duration(info.wallclock_time), command_line(info)] for info in infos]
    return text_table(["ID", "NAME", "STATE", "EXIT", "PID", "STARTED", "WALL", "COMMAND"],
                      _cells(rows))


def text_table(headers: list[str], rows: list[list[str]]) -> str:
    """What tabulate draws as a "plain" table of text, without its guessing of each cell's
    type, which costs 50 µs a row: ``status`` lists every ended job.

    Cells are stripped and left-aligned, a column as wide as its widest cell or its
    header and two more, columns two spaces apart, every line stripped on the right.
    """
    rows = [[cell.strip() for cell in row] for row in rows]
    widths = [max([len(header) + 2, *(len(row[column]) for row in rows)])
              for column, header in enumerate(headers)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
                     for row in [headers, *rows])


def queue_table(queues: list[dict]) -> str:
    """The ``queue`` table: one row per queue (README, "Scheduling")."""
    from tabulate import tabulate

    rows = [[q["name"], "-" if q["slots"] is None else q["slots"],
             "-" if q["in_use"] is None else q["in_use"], q["running"], q["queued"], q["held"]]
            for q in queues]
    return tabulate(_cells(rows), headers=["QUEUE", "SLOTS", "IN USE", "RUNNING", "QUEUED",
                                           "HELD"], tablefmt="plain", disable_numparse=True)


def key_values(info: JobInfo) -> str:
    """Every JobInfo field as ``key: value`` lines; nested objects flattened with dots.

    The arguments are quoted as a shell would need them (``shlex.join``), so
    that ``['a b', 'c']`` and ``['a', 'b', 'c']`` read differently; other lists
    (``allocated_machines``) are joined with spaces.  Keys and values escaped.
    """
    import shlex

    lines = []

    def emit(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                emit(f"{prefix}.{key}", item)
            return
        if value is None:
            text = ""
        elif prefix == "job_template.args" and isinstance(value, list):
            text = shlex.join(map(str, value))
        elif isinstance(value, list):
            text = " ".join(map(str, value))
        else:
            text = str(value)
        lines.append(f"{escape(prefix)}: {escape(text)}")

    for key, value in info.to_dict().items():
        emit(key, value)
    return "\n".join(lines)


def jobs_json(infos: list[JobInfo]) -> str:
    """A JSON list of job records; each submission's template is encoded once."""
    from itertools import groupby

    from .core.records import encode_infos

    parts = [encode_infos(list(group)) for _, group in groupby(infos, lambda i: id(i.job_template))]
    return "[" + ", ".join(parts) + "]"


def to_json(value, pretty: bool = False) -> str:
    """JSON text; compact by default, since the C encoder is only used without indent."""
    return json.dumps(value, indent=2 if pretty else None)


# -- the monitoring session (``monitor``) ------------------------------------------------


def process_table(infos, width: int | None = None, with_jobs: bool = False) -> str:
    """The ``monitor`` table: one row per process, lines cut to ``width`` when given.

    STATE is the OS's view (running, sleeping, stopped, zombie ...); a kernel
    thread, which has no command line, shows its name in brackets, as in ps.
    """
    import time

    from tabulate import tabulate

    rows = []
    for info in infos:
        started = "-" if info.create_time is None else \
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.create_time))
        command = info.commandline or f"[{info.name or '?'}]"
        row = [info.id, info.job_owner or "-", info.os_status or "-", started,
               duration(info.wallclock_time),
               "-" if info.cpu_usage is None else f"{info.cpu_usage:.1f}",
               info.memory_usage or "-", info.name or "-", command]
        rows.append([info.job_id, *row] if with_jobs else row)
    headers = ["PID", "USER", "STATE", "STARTED", "WALL", "CPU%", "RSS", "NAME", "COMMAND"]
    align = ["right", "left", "left", "left", "right", "right", "right", "left", "left"]
    if with_jobs:
        headers, align = ["JOB", *headers], ["left", *align]
    text = tabulate(_cells(rows), headers=headers, tablefmt="plain", disable_numparse=True,
                    colalign=align)
    if width is None:
        return text
    return "\n".join(line[:width].rstrip() for line in text.split("\n"))


def monitor_table(kind: str, infos: list, width: int | None = None,
                  with_jobs: bool = False) -> str:
    """The ``monitor`` table of a monitoring session whose ``TABLE`` is ``kind``."""
    if kind == "cluster":
        return cluster_job_table(infos, width)
    return process_table(infos, width, with_jobs)


def machine_view(kind: str, machines: list[dict]) -> str:
    """``monitor --machine``: this machine's ``key: value`` lines, or a cluster's node table."""
    if kind == "cluster":
        return node_table(machines)
    return "\n\n".join(machine_lines(machine) for machine in machines)


def cluster_job_table(jobs: list[dict], width: int | None = None) -> str:
    """``monitor`` with the Slurm backend: one row per job or array task of the cluster."""
    from tabulate import tabulate

    from .core.models import parse_time

    rows = [[job["id"], job["job_owner"] or "-", job["job_name"] or "-",
             job["state"], job["sub_state"] or "-",
             " ".join(job["allocated_machines"] or []) or "-",
             local_time(parse_time(job["dispatch_time"])), duration(job["wallclock_time"])]
            for job in jobs]
    text = tabulate(_cells(rows), headers=["SLURM ID", "USER", "NAME", "STATE", "SLURM STATE",
                                           "NODES", "STARTED", "WALL"],
                    tablefmt="plain", disable_numparse=True)
    return text if width is None else "\n".join(line[:width].rstrip() for line in text.split("\n"))


def node_table(machines: list[dict]) -> str:
    """``monitor --machine`` with the Slurm backend: one row per node (``sinfo``)."""
    from tabulate import tabulate

    rows = [[m["name"], m["extension_list"]["state"], m["extension_list"]["cpus"] or "-",
             "-" if m["load"] is None else f"{m['load']:.2f}",
             human_size(m["phys_memory"]) or "-",
             human_size(m["extension_list"]["free_memory"]) or "-",
             ",".join(m["extension_list"]["partitions"])] for m in machines]
    return tabulate(_cells(rows), headers=["NODE", "STATE", "CPUS", "LOAD", "MEMORY", "FREE",
                                           "PARTITIONS"], tablefmt="plain", disable_numparse=True)


def machine_lines(machine: dict) -> str:
    """The ``monitor --machine`` view: ``key: value`` lines, sizes and uptime made readable."""
    lines = []
    for key, value in [*((k, v) for k, v in machine.items() if k != "extension_list"),
                       *((f"extension_list.{k}", v)
                         for k, v in machine["extension_list"].items())]:
        if isinstance(value, list):
            text = " ".join(map(str, value))
        elif key.endswith("_memory"):
            text = f"{value} ({human_size(value)})"
        elif key.endswith(".uptime"):
            text = f"{value} ({duration(value)})"
        else:
            text = str(value)
        lines.append(f"{escape(key)}: {escape(text)}")
    return "\n".join(lines)


# -- progress of a wait (``wait``, ``submit --wait`` on a terminal) ------------------------

def progress_line(states: list[str], width: int) -> str:
    """One line of a wait's progress: a bar of the ended tasks, then counts by state.

    ``[#########.........] 12/40 ended: 10 done, 2 failed; 4 running, 24 queued``
    in at most ``width`` characters (the bar shrinks, then goes).  Undetermined
    tasks count as failed: they did not succeed.  Plain ASCII, no escapes.
    """
    counts: dict[str, int] = {}
    for state in states:
        counts[state] = counts.get(state, 0) + 1
    done = counts.get("Done", 0)
    failed = counts.get("Failed", 0) + counts.get("Undetermined", 0)
    ended, total = done + failed, len(states)
    waiting = ", ".join(f"{counts[state]} {state.lower()}"
                        for state in ("Running", "Suspended", "Queued") if counts.get(state))
    text = f"{ended}/{total} ended: {done} done, {failed} failed" + \
        (f"; {waiting}" if waiting else "")
    room = min(30, width - len(text) - 3)
    if room < 5:
        return text[:max(width, 0)]
    filled = room * ended // total if total else 0
    return f"[{'#' * filled}{'.' * (room - filled)}] {text}"
