"""Scheduling benchmarks (README, "Scheduling"): hand-off latency, the memory of waiting
jobs, and a queue of 200 jobs beside task-spooler and nq.

    python3 bench/scheduling.py            # a throw-away venv with `pip install .`
    OSTRACKER_BENCH_VENV=DIR python3 bench/scheduling.py   # reuse (and update) a venv
    OSTRACKER_BENCH_SKIP_NQ=1 ...          # leave out nq (200 jobs one at a time: 40 s)

Every figure comes from what the jobs themselves wrote (their start and end
times, ``date +%s%N``), never from sleeps.  Needs task-spooler (``tsp``) and
nq (``nq``, ``fq``) on PATH for the side-by-side run (Debian packages
``task-spooler`` and ``nq``); without them, those rows say so.  State
directories are made under one temporary directory and left until the end
(deleting thousands of files slows this VM's disk for seconds).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TREE = os.path.dirname(HERE)
HANDOFFS = 100
WAITING = 1000
QUEUE_JOBS = 200


def venv() -> str:
    """A venv with a regular install of this tree (an editable one imports slower)."""
    where = os.environ.get("OSTRACKER_BENCH_VENV") or tempfile.mkdtemp(prefix="osb-venv-")
    python = os.path.join(where, "bin", "python")
    if not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", where], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps",
                    TREE], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", TREE], check=True)
    return where


class Ostracker:
    def __init__(self, bin_dir: str, state: str):
        self.exe = os.path.join(bin_dir, "ostracker")
        self.python = os.path.join(bin_dir, "python")
        self.env = dict(os.environ, OSTRACKER_STATE_DIR=state)
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
        self.state = state

    def __call__(self, *args, check=True) -> str:
        done = subprocess.run([self.exe, *map(str, args)], env=self.env, capture_output=True,
                              text=True)
        if check and done.returncode != 0:
            raise SystemExit(f"ostracker {' '.join(map(str, args))}: {done.stderr.strip()}")
        return done.stdout.strip()

    def scheduler_pid(self) -> int | None:
        try:
            with open(os.path.join(self.state, "schedule", "lock")) as handle:
                pid = int(handle.read().strip() or 0)
        except (OSError, ValueError):
            return None
        return pid if pid and os.path.exists(f"/proc/{pid}") else None


def stamps(path: str) -> tuple[int, int]:
    start, end = open(path).read().split()
    return int(start), int(end)


def percentiles(values: list[float]) -> str:
    values = sorted(values)
    p95 = values[min(len(values) - 1, int(round(0.95 * (len(values) - 1))))]
    return (f"median {statistics.median(values) * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, "
            f"max {values[-1] * 1000:.1f} ms (n={len(values)})")


def logger(path: str, body: str = "") -> list[str]:
    return ["sh", "-c", f'date +%s%N > {path}; {body} date +%s%N >> {path}']


# -- 1. hand-offs ----------------------------------------------------------------------

def handoff_slot(cli: Ostracker, work: str) -> list[float]:
    """A 1-slot queue, jobs back to back: next start minus previous end."""
    cli("queue", "one", "--slots", "0")
    paths = [os.path.join(work, f"slot-{i}") for i in range(HANDOFFS + 1)]
    ids = [cli("submit", "-q", "one", "--", *logger(path, "sleep 0.02;")) for path in paths]
    cli("queue", "one", "--slots", "1")
    cli("wait", *ids)
    runs = [stamps(path) for path in paths]
    return [(runs[i + 1][0] - runs[i][1]) / 1e9 for i in range(HANDOFFS)]


def handoff_dependency(cli: Ostracker, work: str) -> list[float]:
    """A chain of afterok: each job starts when the one before ended."""
    paths = [os.path.join(work, f"dep-{i}") for i in range(HANDOFFS + 1)]
    hold = cli("submit", "--hold", "--", "true")
    previous = hold
    ids = []
    for path in paths:
        previous = cli("submit", "-d", f"afterok:{previous}", "--", *logger(path))
        ids.append(previous)
    cli("release", hold)
    cli("wait", *ids)
    runs = [stamps(path) for path in paths]
    return [(runs[i + 1][0] - runs[i][1]) / 1e9 for i in range(HANDOFFS)]


def handoff_begin(cli: Ostracker, work: str) -> list[float]:
    """--begin now+N: the job's start minus the time it was given."""
    from datetime import datetime

    found = []
    ids = []
    for i in range(20):
        path = os.path.join(work, f"begin-{i}")
        job = cli("submit", "--begin", "now+2", "--", *logger(path))
        ids.append((job, path))
    cli("wait", *[job for job, _ in ids])
    for job, path in ids:
        begin = json.loads(cli("info", job, "--json"))["job_template"]["start_time"]
        found.append(stamps(path)[0] / 1e9 - datetime.fromisoformat(begin).timestamp())
    return found


def handoff_release(cli: Ostracker, work: str) -> list[float]:
    """release: the job's start minus the moment release was called."""
    found = []
    for i in range(20):
        path = os.path.join(work, f"release-{i}")
        job = cli("submit", "--hold", "--", *logger(path))
        before = time.time_ns()
        cli("release", job)
        cli("wait", job)
        found.append((stamps(path)[0] - before) / 1e9)
    return found


# -- 2. memory of waiting jobs ---------------------------------------------------------

def pss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as handle:
        for line in handle:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def switches(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("voluntary_ctxt_switches"):
                return int(line.split()[1])
    return 0


def waiting_memory(cli: Ostracker) -> dict:
    """1,000 jobs waiting in a paused queue, submitted through the Python API."""
    cli("queue", "paused", "--slots", "0")
    script = ("import sys; from ostracker import JobTracker, JobTemplate; "
              "t = JobTracker(); tpl = JobTemplate('true', queue_name='paused'); "
              f"[t.add_job(tpl) for _ in range({WAITING})]")
    subprocess.run([cli.python, "-c", script], env=cli.env, check=True)
    pid = None
    deadline = time.monotonic() + 10
    while pid is None and time.monotonic() < deadline:
        pid = cli.scheduler_pid()
        time.sleep(0.05)
    cli("status", "-q")  # a pass of the scheduler has read every waiting job by now
    time.sleep(0.5)
    processes = [pid] + [int(p) for p in os.listdir("/proc") if p.isdigit() and
                         cli.state.encode() in _cmdline(int(p)) and int(p) != pid]
    total = sum(pss_kib(p) for p in processes)
    before = switches(pid)
    time.sleep(5)
    return {"processes": len(processes), "pss_mib": total / 1024,
            "wakeups_in_5s": switches(pid) - before}


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read()
    except OSError:
        return b""


# -- 3. 200 jobs into 4 slots beside task-spooler and nq --------------------------------

def queue_run(cli: Ostracker) -> float:
    """A shell loop submits 200 `sleep 0.2` into a 4-slot queue; time to the last end."""
    cli("queue", "four", "--slots", "4")
    loop = (f'for i in $(seq {QUEUE_JOBS}); do "{cli.exe}" submit -q four -- sleep 0.2 '
            '> /dev/null; done; '
            f'while [ -n "$("{cli.exe}" status -q --state Queued --state Running)" ]; '
            'do sleep 0.01; done')
    started = time.monotonic()
    subprocess.run(["sh", "-c", loop], env=cli.env, check=True)
    return time.monotonic() - started


def tsp_run(work: str) -> float | None:
    if shutil.which("tsp") is None:
        return None
    env = dict(os.environ, TS_SOCKET=os.path.join(work, "tsp.socket"), TMPDIR=work,
               TS_MAXFINISHED="1000", TS_SAVELIST="")
    subprocess.run(["tsp", "-S", "4"], env=env, check=True, capture_output=True)
    loop = (f'for i in $(seq {QUEUE_JOBS}); do tsp sleep 0.2 > /dev/null; done; '
            'while tsp | grep -q -e running -e queued; do sleep 0.01; done')
    started = time.monotonic()
    subprocess.run(["sh", "-c", loop], env=env, check=True)
    took = time.monotonic() - started
    subprocess.run(["tsp", "-K"], env=env, capture_output=True)
    return took


def nq_run(work: str) -> float | None:
    if shutil.which("nq") is None or os.environ.get("OSTRACKER_BENCH_SKIP_NQ"):
        return None
    env = dict(os.environ, NQDIR=os.path.join(work, "nq"))
    os.makedirs(env["NQDIR"], exist_ok=True)
    loop = (f'for i in $(seq {QUEUE_JOBS}); do nq -q sleep 0.2; done; nq -w')
    started = time.monotonic()
    subprocess.run(["sh", "-c", loop], env=env, check=True)
    return time.monotonic() - started


def main() -> None:
    base = tempfile.mkdtemp(prefix="osb-sched-")
    bin_dir = os.path.join(venv(), "bin")
    print(f"work: {base}; cores: {os.cpu_count()}; load: {os.getloadavg()[0]:.2f}")
    try:
        def fresh(name):
            return Ostracker(bin_dir, os.path.join(base, name))

        print(f"hand-off, slot freed:      {percentiles(handoff_slot(fresh('a'), base))}")
        print(f"hand-off, dependency:      {percentiles(handoff_dependency(fresh('b'), base))}")
        print(f"hand-off, begin time:      {percentiles(handoff_begin(fresh('c'), base))}")
        print(f"hand-off, release:         {percentiles(handoff_release(fresh('d'), base))}")
        memory = waiting_memory(fresh("e"))
        print(f"{WAITING} waiting jobs: {memory['processes']} process(es), PSS "
              f"{memory['pss_mib']:.1f} MiB in all, {memory['wakeups_in_5s']} wake-ups in 5 s")
        ours = queue_run(fresh("f"))
        theirs = tsp_run(base)
        one_at_a_time = nq_run(base)
        print(f"{QUEUE_JOBS} x sleep 0.2 into 4 slots: ostracker {ours:.2f} s"
              + (f", tsp -S 4 {theirs:.2f} s (ratio {ours / theirs:.2f})" if theirs else
                 ", tsp not installed")
              + (f", nq (one at a time) {one_at_a_time:.2f} s" if one_at_a_time else ""))
    finally:
        for name in os.listdir(base):
            state = os.path.join(base, name, "schedule", "lock")
            try:
                pid = int(open(state).read().strip() or 0)
                os.kill(pid, 9)
            except (OSError, ValueError):
                pass
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
