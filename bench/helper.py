"""Small helpers for bench/run.sh (standard library only; run with any python3 >= 3.8).

    helper.py fresh DIR              wait for the reapers of DIR to end, then empty DIR (0700)
    helper.py wait-reapers DIR [SEC] wait until no reaper of DIR lives (a lock under DIR/jobs,
                                     or a reaper process naming DIR)
    helper.py mem PID                {"pid", "ppid", "rss_kb", "pss_kb", "uss_kb", "cmdline"} as JSON
    helper.py parent PID             parent PID (field 4 of /proc/PID/stat)
    helper.py cleanup BASE           kill (by PID) every reaper whose state dir is under BASE,
                                     and the reaper's children; prints what it killed
    helper.py report WORKDIR         print the text report and the Markdown table from the
                                     files run.sh left in WORKDIR (see load_results)

Reapers are found the way ostracker itself does it: a job's reaper holds an flock on
``jobs/N/reaper.lock`` for as long as it lives.  For cleanup, a reaper is recognised by
its command line: ``python -I -S -c '...ostracker.local.reaper...' SITE STATE_DIR ...``,
or ``...ostracker.local.standby...`` (started by ``submit`` ahead of its job) and the
state dir in its environment.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sys
import time


# -- reapers -----------------------------------------------------------------

def live_reaper_locks(state_dir: str) -> list[str]:
    jobs = os.path.join(state_dir, "jobs")
    try:
        names = os.listdir(jobs)
    except FileNotFoundError:
        return []
    held = []
    for name in names:
        path = os.path.join(jobs, name, "reaper.lock")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            held.append(path)
        finally:
            os.close(fd)
    return held


def wait_reapers(state_dir: str, timeout: float = 30.0) -> bool:
    """Until no reaper of ``state_dir`` lives: none holds a reaper.lock under jobs/, and
    no reaper process names the directory (one that compacts its ended job has moved
    its lock to ended/ and removes it, yet still works)."""
    deadline = time.monotonic() + timeout
    while True:
        if not live_reaper_locks(state_dir) and not reapers_of(state_dir):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)


def fresh(state_dir: str) -> None:
    """Put the used state dir aside (a rename) instead of deleting it now.

    Deleting thousands of files just before a timed run makes the file system
    of a VM with online discard slow for the next seconds, which would be
    charged to the run; run.sh deletes everything at the end.
    """
    if not wait_reapers(state_dir):
        sys.exit(f"helper: reapers in {state_dir} still alive after 30 s")
    if os.path.exists(state_dir):
        os.rename(state_dir, f"{state_dir}.used-{time.time_ns()}")
    os.mkdir(state_dir, 0o700)


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    # comm (field 2) is in parentheses and may hold spaces: split after the last ')'
    return int(stat.rsplit(")", 1)[1].split()[1])


def children(pid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if parent(int(name)) == pid:
                    out.append(int(name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _state_dir_variable(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            for entry in f.read().split(b"\0"):
                if entry.startswith(b"OSTRACKER_STATE_DIR="):
                    return entry.partition(b"=")[2].decode(errors="replace")
    except OSError:
        pass
    return None


def _reapers(names_it) -> list[int]:
    """PIDs of the reapers one of whose arguments ``names_it`` accepts, or whose
    $OSTRACKER_STATE_DIR it accepts (a reaper that ``submit`` started ahead of its job
    names no state dir in its arguments)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        argv = cmdline(int(name))
        if not any("ostracker.local.reaper" in a or "ostracker.local.standby" in a
                   for a in argv):
            continue
        variable = _state_dir_variable(int(name))
        if any(names_it(a) and "site-packages" not in a for a in argv) or \
                (variable is not None and names_it(os.path.abspath(variable).rstrip("/"))):
            found.append(int(name))
    return found


def reapers_under(base: str) -> list[int]:
    base = os.path.abspath(base).rstrip("/") + "/"
    return _reapers(lambda argument: argument.startswith(base))


def reapers_of(state_dir: str) -> list[int]:
    state_dir = os.path.abspath(state_dir).rstrip("/")
    return _reapers(lambda argument: argument == state_dir)


def cleanup(base: str) -> None:
    for reaper in reapers_under(base):
        for child in children(reaper):
            try:
                os.killpg(child, signal.SIGKILL)  # tasks run in their own process group
            except OSError:
                pass
            try:
                os.kill(child, signal.SIGKILL)
            except OSError:
                pass
        try:
            os.kill(reaper, signal.SIGKILL)
            print(f"helper: killed leftover reaper {reaper}", file=sys.stderr)
        except OSError:
            pass


# -- memory ------------------------------------------------------------------

def mem(pid: int) -> dict:
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if len(parts) == 2 and parts[1] == "kB":
                fields[key] = int(parts[0])
    return {"pid": pid, "ppid": parent(pid), "rss_kb": fields["Rss"], "pss_kb": fields["Pss"],
            "uss_kb": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0),
            "cmdline": " ".join(cmdline(pid))[:300]}


# -- report ------------------------------------------------------------------

def _ms(result: dict | None) -> str:
    if not result:
        return "n/a"
    return f"{result['mean'] * 1e3:.1f} ± {result['stddev'] * 1e3:.1f} ms"


def _ratio(a: dict | None, b: dict | None, key: str) -> float | None:
    if not a or not b or not b.get(key):
        return None
    return a[key] / b[key]


def _hyperfine(workdir: str, name: str) -> list[dict] | None:
    try:
        with open(os.path.join(workdir, name)) as f:
            return json.load(f)["results"]
    except (OSError, ValueError, KeyError):
        return None


def _pick(results: list[dict] | None, index: int) -> dict | None:
    return results[index] if results and len(results) > index else None


def load_results(workdir: str) -> dict:
    """Gather run.sh's outputs: meta.json, h1/h2p/h2n/h3.json (hyperfine exports), mem.json."""
    try:
        with open(os.path.join(workdir, "meta.json")) as f:
            data = json.load(f)
    except (OSError, ValueError):
        data = {}
    h1, h2p, h2n, h3 = (_hyperfine(workdir, n) for n in ("h1.json", "h2p.json", "h2n.json", "h3.json"))
    missing = "benchmark did not complete (see the log above)"
    data["timings"] = [
        # in h1 the commands are: ostracker array, xargs
        {"figure": "1. array of 1000 /bin/true, 4 at a time", "ostracker": _pick(h1, 0),
         "baseline": _pick(h1, 1), "baseline_name": "seq|xargs -P4", "goal": 1.5,
         "error": None if h1 else missing},
        # in h2p/h2n: python -c 'import click', ostracker submit
        {"figure": "2. submit -- /bin/true (0.05 s pause before each run)",
         "ostracker": _pick(h2p, 1), "baseline": _pick(h2p, 0),
         "baseline_name": "python -c 'import click'", "goal": 1.3,
         "error": None if h2p else missing},
        {"figure": "2b. submit -- /bin/true, back to back (no pause)",
         "ostracker": _pick(h2n, 1), "baseline": _pick(h2n, 0),
         "baseline_name": "python -c 'import click'", "goal": None,
         "error": None if h2n else missing},
        # in h3: python -c 'import click', status --json, info ID.2500
        {"figure": "3. status --json, 5000 finished tasks", "ostracker": _pick(h3, 1),
         "baseline": _pick(h3, 0), "baseline_name": "python -c 'import click'", "goal": 2.5,
         "error": None if h3 else missing},
        {"figure": "3b. info ID.2500 (one task of the 5000)", "ostracker": _pick(h3, 2),
         "baseline": _pick(h3, 0), "baseline_name": "python -c 'import click'", "goal": 1.3,
         "error": None if h3 else missing},
    ]
    try:
        with open(os.path.join(workdir, "mem.json")) as f:
            data["memory"] = json.load(f)
    except (OSError, ValueError):
        data["memory"] = {"error": "not measured (see the log above)"}
    return data


def report(workdir: str) -> None:
    data = load_results(workdir)
    rows = []  # (figure, ostracker, baseline, ratio, median ratio, min ratio, goal, verdict)
    for item in data["timings"]:
        ost, base, goal = item.get("ostracker"), item.get("baseline"), item.get("goal")
        ratio, mratio = _ratio(ost, base, "mean"), _ratio(ost, base, "median")
        minratio = _ratio(ost, base, "min")
        if item.get("error"):
            verdict = "ERROR"
        elif ratio is None or goal is None:
            verdict = "—"
        else:
            verdict = "ok" if ratio <= goal else "MISSED"
        rows.append((item["figure"], _ms(ost), f"{_ms(base)} ({item['baseline_name']})",
                     "n/a" if ratio is None else f"{ratio:.2f}",
                     "n/a" if mratio is None else f"{mratio:.2f}",
                     "n/a" if minratio is None else f"{minratio:.2f}",
                     "—" if goal is None else f"<= {goal}", verdict))
    memory = data.get("memory") or {}
    if memory.get("reaper"):
        r, b = memory["reaper"], memory.get("baseline")
        ratio = f"{r['pss_kb'] / b['pss_kb']:.2f}" if b else "n/a"
        rratio = f"{r['rss_kb'] / b['rss_kb']:.2f}" if b else "n/a"
        rows.append(("4. reaper memory, PSS (RSS)",
                     f"{r['pss_kb'] / 1024:.1f} MiB ({r['rss_kb'] / 1024:.1f} MiB)",
                     (f"{b['pss_kb'] / 1024:.1f} MiB ({b['rss_kb'] / 1024:.1f} MiB) (idle `python -I -S`)"
                      if b else "n/a"),
                     f"{ratio} ({rratio})", "—", "—", "— (report only)", "—"))
    elif memory.get("error"):
        rows.append(("4. reaper memory, PSS (RSS)", "n/a", "n/a", "n/a", "n/a", "n/a", "—", "ERROR"))

    head = ("figure", "ostracker (mean ± σ)", "baseline (mean ± σ)", "ratio (means)",
            "ratio (medians)", "ratio (mins)", "goal", "")
    print("== ostracker benchmarks ==")
    for key in ("when", "machine", "python", "hyperfine", "load_before", "load_after"):
        if key in data:
            print(f"{key:12} {data[key]}")
    print()
    widths = [max(len(str(row[i])) for row in rows + [head]) for i in range(len(head))]
    for row in [head] + rows:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip())
    if memory.get("reaper"):
        r = memory["reaper"]
        print(f"\nreaper PID {r['pid']}: RSS {r['rss_kb']} kB, PSS {r['pss_kb']} kB, "
              f"USS {r['uss_kb']} kB")
    for item in data["timings"]:
        if item.get("error"):
            print(f"ERROR in {item['figure']}: {item['error']}")
    if memory.get("error"):
        print(f"ERROR in reaper memory: {memory['error']}")
    if data.get("notes"):
        print()
        for note in data["notes"]:
            print(f"note: {note}")

    print("\n### Markdown\n")
    print("| " + " | ".join(head[:-1]) + " | met |")
    print("|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |")


def main(argv: list[str]) -> None:
    command, args = argv[0], argv[1:]
    if command == "fresh":
        fresh(args[0])
    elif command == "wait-reapers":
        ok = wait_reapers(args[0], float(args[1]) if len(args) > 1 else 30.0)
        sys.exit(0 if ok else 1)
    elif command == "mem":
        print(json.dumps(mem(int(args[0]))))
    elif command == "parent":
        print(parent(int(args[0])))
    elif command == "cleanup":
        cleanup(args[0])
    elif command == "report":
        report(args[0])
    else:
        sys.exit(f"helper: unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
