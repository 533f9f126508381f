"""History benchmarks (bench/README.md, "History"): what many ended jobs cost the commands
that read them, the files they leave, how quietly `wait` waits, and an array beside
xargs, task-spooler and GNU parallel.

    python3 bench/history.py                       # about 10 minutes on a 2-core VM
    python3 bench/history.py --quick               # a smaller run (about 2 minutes)
    python3 bench/history.py --jobs 1000 --rounds 3
    OSTRACKER_BENCH_VENV=DIR python3 bench/history.py   # reuse (and update) a venv

Figures:

1. N ended single jobs (made through the Python API) plus one running ``sleep 600``:
   hyperfine -N times ``status --json``, ``status --active``, ``status -q --state
   Running`` and the bash completion of ``suspend`` against ``python -c 'import click'``
   (the same venv's interpreter), in five blocks of all five commands, pooled.
2. Files and bytes left in the state dir by an ended array of 10,000 ``/bin/true``
   tasks and by the N ended single jobs.
3. Voluntary context switches and CPU time of ``wait ID`` on a 5 s job and of
   ``submit --wait -- sleep 5`` (``os.wait4`` rusage).
4. ``submit --array 1-1000 --max-parallel 4 --wait -- /bin/true`` beside ``seq 1000 |
   xargs -P4 -n1 /bin/true``, task-spooler (``tsp -S 4``) and ``seq 1000 | parallel -j4
   /bin/true``, in alternating rounds after one warm-up round.

State directories go under /var/tmp (a real disk file system, as a user's would be;
``--base``), are never deleted between timed runs (a used one is renamed aside: deleting
thousands of files slows file creation on this VM for tens of seconds) and are all
removed at the end, with every process the script started, also on Ctrl-C.
Needs hyperfine (>= 1.13); tsp and parallel rows say so when those are missing.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TREE = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import helper  # noqa: E402  (bench/helper.py: reapers, clean-up)

# Goals (README of bench/, "History").
GOAL_JSON = 1.5          # status --json, ratio of means to the import-click floor
GOAL_FILTERED = 1.2      # status --active, status -q --state Running
GOAL_COMPLETE_MS = 100   # TAB completion of `suspend`, absolute
GOAL_SWITCHES = 20       # voluntary context switches of a wait on a 5 s job
GOAL_ARRAY = 1.2         # array of 1000 /bin/true, median ratio to xargs

MAKER = r"""
import json, sys, time
from ostracker.core import registry
from ostracker.core.models import JobTemplate
state, n = sys.argv[1], int(sys.argv[2])
t = registry.open_tracker("local", state)
t0 = time.monotonic()
ids = []
for i in range(n):
    ids.append(t.add_job(JobTemplate("true")))
    if (i + 1) % 1000 == 0:
        print(f"   {i + 1} submitted ({time.monotonic() - t0:.0f} s)", file=sys.stderr, flush=True)
t1 = time.monotonic()
t.wait_jobs(ids)
print(json.dumps({"submit_s": t1 - t0, "wait_s": time.monotonic() - t1, "first": ids[0],
                  "last": ids[-1]}))
"""


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Interrupted(Exception):
    pass


# -- set-up ------------------------------------------------------------------------------

def make_venv(work: str, log) -> str:
    """A venv with a regular install of this tree (an editable one imports slower)."""
    where = os.environ.get("OSTRACKER_BENCH_VENV") or os.path.join(work, "venv")
    python = os.path.join(where, "bin", "python")
    if os.path.exists(python):
        command = [python, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", TREE]
    else:
        subprocess.run([sys.executable, "-m", "venv", where], check=True)
        command = [python, "-m", "pip", "install", "-q", TREE]
    done = subprocess.run(command, stdout=log, stderr=log, cwd=work)
    if done.returncode != 0:
        raise SystemExit(f"history.py: {' '.join(command)} failed (see {log.name})")
    found = subprocess.run([python, "-c", "import ostracker; print(ostracker.__file__)"],
                           capture_output=True, text=True, cwd=work).stdout.strip()
    if not found.startswith(where):
        raise SystemExit(f"history.py: ostracker is imported from {found}, not from the venv")
    return where


class Ost:
    """The bench venv's ostracker over one state dir."""

    def __init__(self, venv: str, state: str, work: str):
        self.exe = os.path.join(venv, "bin", "ostracker")
        self.python = os.path.join(venv, "bin", "python")
        self.state = state
        self.work = work
        self.env = dict(os.environ, OSTRACKER_STATE_DIR=state)
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([self.exe, *args], env=self.env, capture_output=True, text=True,
                              cwd=self.work)

    def __call__(self, *args: str) -> str:
        done = self.run(*args)
        if done.returncode != 0:
            raise RuntimeError(f"`ostracker {shlex.join(args)}` exited {done.returncode}: "
                               f"{done.stderr.strip() or done.stdout.strip()}")
        return done.stdout.strip()


def hyperfine(work: str, log, label: str, env: dict, commands: list[tuple[str, str]],
              runs: int, warmup: int, name: str, blocks: int = 5) -> list[dict] | None:
    """The commands timed side by side: ``blocks`` hyperfine runs of all of them, one after
    the other, each with ``runs / blocks`` runs a command (and its own warm-up), their
    times pooled.  On a machine whose speed drifts over a minute (steal time, page
    cache), one hyperfine run of each command after the other would compare the floor
    of one minute with a command of the next."""
    pooled: dict[str, list[float]] = {title: [] for title, _ in commands}
    for block in range(blocks):
        out = os.path.join(work, f"{name}-{block}.json")
        argv = ["hyperfine", "-N", "--style", "basic", "--warmup", str(warmup), "--runs",
                str(max(2, runs // blocks)), "--export-json", out]
        for title, command in commands:
            argv += ["-n", title, command]
        log.write(f"\n==== {label} (block {block + 1} of {blocks})\n")
        log.flush()
        done = subprocess.run(argv, env=env, stdout=log, stderr=log, cwd=work)
        if done.returncode != 0:
            say(f"   hyperfine FAILED (exit {done.returncode}); see the log")
            return None
        with open(out) as handle:
            for result in json.load(handle)["results"]:
                pooled[result["command"]] += result["times"]
    return [{"command": title, "times": times, "mean": statistics.mean(times),
             "stddev": statistics.stdev(times), "median": statistics.median(times)}
            for title, times in pooled.items()]


def settle(most: float = 120.0) -> str:
    """The load average once the 1-minute figure is under 1, or after ``most`` seconds:
    making thousands of jobs leaves the machine busy (its disk flushing, its page cache
    refilling) for a while, and hyperfine would time that too."""
    deadline = time.monotonic() + most
    while float(open("/proc/loadavg").read().split()[0]) >= 1.0 and \
            time.monotonic() < deadline:
        time.sleep(2)
    return " ".join(open("/proc/loadavg").read().split()[:3])


def files_and_bytes(path: str) -> dict:
    count = sum(len(files) for _, _, files in os.walk(path))
    apparent = int(subprocess.run(["du", "-sb", path], capture_output=True, text=True)
                   .stdout.split()[0])
    disk = int(subprocess.run(["du", "-s", "--block-size=1", path], capture_output=True,
                              text=True).stdout.split()[0])
    return {"files": count, "bytes": apparent, "disk_bytes": disk}


def kib(n: int) -> str:
    return f"{n / 1024:,.0f} KiB" if n < 10 * 1024 * 1024 else f"{n / 1024 / 1024:,.1f} MiB"


# -- 1. many ended jobs, and 2b. their files ---------------------------------------------

def many_jobs(venv: str, base: str, work: str, log, n: int, args, notes: list,
              running: list) -> dict:
    state = os.path.join(base, f"singles-{n}")
    os.mkdir(state, 0o700)
    ost = Ost(venv, state, work)
    say(f"-- 1. making {n:,} ended single jobs through the Python API")
    started = time.monotonic()
    done = subprocess.run([ost.python, "-c", MAKER, state, str(n)], env=ost.env, cwd=work,
                          stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"making {n} jobs through the Python API failed (exit "
                           f"{done.returncode})")
    made = json.loads(done.stdout)
    if not helper.wait_reapers(state, 60):
        notes.append(f"N={n}: reapers still alive 60 s after wait_jobs returned")
    made["total_s"] = time.monotonic() - started
    files = files_and_bytes(state)
    say(f"   {made['total_s']:.1f} s ({made['submit_s']:.1f} s add_job, {made['wait_s']:.1f} s "
        f"wait_jobs); {files['files']:,} files, {kib(files['bytes'])}")

    job = ost("submit", "--", "sleep", "600")
    running.append((ost, job))
    checks = []
    listed = json.loads(ost("status", "--json"))
    if len(listed) != n + 1:
        checks.append(f"`status --json` lists {len(listed)} records, not {n + 1}")
    active = ost("status", "--active").splitlines()
    if len(active) != 2 or job not in active[1].split()[:1]:
        checks.append(f"`status --active` printed {len(active)} lines: {active[:3]!r}")
    quiet = ost("status", "-q", "--state", "Running").split()
    if quiet != [job]:
        checks.append(f"`status -q --state Running` printed {quiet[:5]!r}, not [{job!r}]")
    complete_env = dict(ost.env, _OSTRACKER_COMPLETE="bash_complete",
                        COMP_WORDS="ostracker suspend ", COMP_CWORD="2")
    offered = subprocess.run([ost.exe], env=complete_env, capture_output=True, text=True,
                             cwd=work)
    lines = offered.stdout.splitlines()
    if f"plain,{job}" not in lines:
        checks.append(f"completion of `suspend` did not offer {job}: exit {offered.returncode}, "
                      f"{lines[:5]!r} {offered.stderr.strip()[:200]!r}")
    for check in checks:
        notes.append(f"N={n}: ODD: {check}")
        say(f"   ODD: {check}")

    load = settle()
    say(f"-- 1. hyperfine over {n:,} ended jobs + 1 running ({args.runs} runs each; load {load})")
    commands = [
        ("python -c 'import click'", f"{shlex.quote(ost.python)} -c 'import click'"),
        ("status --json", f"{shlex.quote(ost.exe)} status --json"),
        ("status --active", f"{shlex.quote(ost.exe)} status --active"),
        ("status -q --state Running", f"{shlex.quote(ost.exe)} status -q --state Running"),
        ("complete suspend", "env _OSTRACKER_COMPLETE=bash_complete 'COMP_WORDS=ostracker "
                             f"suspend ' COMP_CWORD=2 {shlex.quote(ost.exe)}"),
    ]
    results = hyperfine(work, log, f"1. {n} ended jobs", ost.env, commands, args.runs,
                        args.warmup, f"h1-{n}")
    ost("terminate", job)
    running.remove((ost, job))
    helper.wait_reapers(state, 10)
    listing = os.path.join(state, "history-local.listing")
    return {"n": n, "made": made, "files": files, "results": results, "load": load,
            "offered": len(lines), "checks": checks,
            "listing_bytes": os.path.getsize(listing) if os.path.exists(listing) else None}


# -- 2a. the files of an ended array -----------------------------------------------------

def array_files(venv: str, base: str, work: str, tasks: int) -> dict:
    state = os.path.join(base, f"array-{tasks}")
    os.mkdir(state, 0o700)
    ost = Ost(venv, state, work)
    say(f"-- 2. an array of {tasks:,} /bin/true, 4 at a time")
    started = time.monotonic()
    done = ost.run("submit", "--array", f"1-{tasks}", "--max-parallel", "4", "--wait", "--",
                   "/bin/true")
    took = time.monotonic() - started
    error = None
    if done.returncode != 0:
        error = (f"`ostracker submit --array 1-{tasks} ...` exited {done.returncode}: "
                 f"{done.stderr.strip()[:300]}")
    helper.wait_reapers(state, 60)
    files = files_and_bytes(state)
    say(f"   {took:.1f} s; {files['files']:,} files, {kib(files['bytes'])}")
    return {"tasks": tasks, "seconds": took, "files": files, "error": error}


# -- 3. a quiet wait ---------------------------------------------------------------------

def rusage_of(argv: list[str], env: dict, cwd: str) -> dict:
    started = time.monotonic()
    child = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.monotonic() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    out, err = child.stdout.read().decode(), child.stderr.read().decode()
    child.stdout.close()
    child.stderr.close()
    return {"nvcsw": usage.ru_nvcsw, "nivcsw": usage.ru_nivcsw,
            "cpu_ms": (usage.ru_utime + usage.ru_stime) * 1000, "wall_s": wall,
            "exit": child.returncode, "stdout": out.strip(), "stderr": err.strip()}


def quiet_wait(venv: str, base: str, work: str, seconds: float) -> dict:
    state = os.path.join(base, "wait")
    os.mkdir(state, 0o700)
    ost = Ost(venv, state, work)
    say(f"-- 3. wait on a {seconds:g} s job; submit --wait -- sleep {seconds:g}")
    floors = [rusage_of([ost.python, "-c", "import click"], ost.env, work) for _ in range(5)]
    floor = min(floors, key=lambda r: r["nvcsw"])
    job = ost("submit", "--", "sleep", f"{seconds:g}")
    waited = rusage_of([ost.exe, "wait", job], ost.env, work)
    waited["job"] = job
    submitted = rusage_of([ost.exe, "submit", "--wait", "--", "sleep", f"{seconds:g}"],
                          ost.env, work)
    helper.wait_reapers(state, 10)
    for what, got in (("wait", waited), ("submit --wait", submitted)):
        say(f"   {what}: {got['nvcsw']} voluntary switches, {got['cpu_ms']:.0f} ms CPU, "
            f"{got['wall_s']:.2f} s, exit {got['exit']}")
    return {"seconds": seconds, "floor": floor, "wait": waited, "submit_wait": submitted}


# -- 4. an array beside xargs, task-spooler and parallel ---------------------------------

def create_probe(base: str, count: int = 300) -> dict:
    """Microseconds to create one empty file (O_CREAT|O_EXCL, close) in a new dir under base.

    Each ostracker task creates a few files (its output files, records written through a
    temporary file); on a VM whose disk is discarded online that cost swings widely with
    what was deleted lately, by this script or by anything else on the machine.
    """
    where = os.path.join(base, f"probe-{time.time_ns()}")
    os.mkdir(where, 0o700)
    took = []
    for i in range(count):
        started = time.perf_counter()
        os.close(os.open(os.path.join(where, str(i)), os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                         0o600))
        took.append((time.perf_counter() - started) * 1e6)
    return {"median_us": statistics.median(took), "mean_us": statistics.mean(took)}


def array_rounds(venv: str, base: str, work: str, rounds: int, tasks: int,
                 tsp_sockets: list) -> dict:
    state = os.path.join(base, "rounds")
    ost = Ost(venv, state, work)
    env = dict(ost.env)
    have_tsp, have_parallel = shutil.which("tsp"), shutil.which("parallel")
    times: dict[str, list[float]] = {"ostracker": [], "xargs": [], "tsp": [], "parallel": []}
    errors: list[str] = []
    counter = [0]

    def timed(command: str, run_env: dict) -> float | None:
        started = time.monotonic()
        done = subprocess.run(["sh", "-c", command], env=run_env, cwd=work,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        took = time.monotonic() - started
        if done.returncode != 0:
            errors.append(f"`{command}` exited {done.returncode}: {done.stderr.strip()[:300]}")
            return None
        return took

    def ostracker_run() -> float | None:
        helper.fresh(state)  # waits for the last run's reaper, renames the used dir aside
        return timed(f"{shlex.quote(ost.exe)} submit --array 1-{tasks} --max-parallel 4 "
                     "--wait -- /bin/true", env)

    def xargs_run() -> float | None:
        return timed(f"seq {tasks} | xargs -P4 -n1 /bin/true", env)

    def tsp_run() -> float | None:
        # A private server per run: its own socket, its output files in its own dir.
        counter[0] += 1
        where = os.path.join(base, f"tsp-{counter[0]}")
        os.mkdir(where, 0o700)
        tenv = dict(env, TS_SOCKET=os.path.join(where, "socket"), TMPDIR=where,
                    TS_MAXFINISHED=str(tasks * 2))
        tsp_sockets.append(tenv)
        subprocess.run(["tsp", "-S", "4"], env=tenv, check=True, capture_output=True)
        # Only 4 run at a time, in order: once the last job has started, every job but the
        # last four has ended, so waiting for the last four waits for all of them.
        took = timed(f"for i in $(seq {tasks}); do tsp /bin/true; done > {where}/ids; "
                     f"for id in $(tail -n 4 {where}/ids); do tsp -w $id || exit 1; done",
                     tenv)
        listed = subprocess.run(["tsp"], env=tenv, capture_output=True, text=True).stdout
        ended = sum(1 for line in listed.splitlines() if " finished " in line)
        if took is not None and ended != tasks:
            errors.append(f"tsp: {ended} jobs finished, not {tasks}")
        subprocess.run(["tsp", "-K"], env=tenv, capture_output=True)
        tsp_sockets.remove(tenv)
        return took

    def parallel_run() -> float | None:
        where = os.path.join(base, "parallel")
        os.makedirs(where, exist_ok=True)
        penv = dict(env, PARALLEL_HOME=where, TMPDIR=where)
        return timed(f"seq {tasks} | parallel -j4 /bin/true", penv)

    contenders = [("ostracker", ostracker_run), ("xargs", xargs_run)]
    if have_tsp:
        contenders.append(("tsp", tsp_run))
    if have_parallel:
        contenders.append(("parallel", parallel_run))
    say(f"-- 4. array of {tasks} /bin/true, 4 at a time: 1 warm-up round, {rounds} rounds of "
        + ", ".join(name for name, _ in contenders))
    probes = [create_probe(base)]
    for round_no in range(rounds + 1):
        line = []
        for name, run in contenders:
            took = run()
            if round_no and took is not None:
                times[name].append(took)
            line.append(f"{name} {'failed' if took is None else f'{took:.2f} s'}")
        say(f"   {'warm-up' if not round_no else f'round {round_no}'}: " + ", ".join(line))
    helper.wait_reapers(state, 30)
    probes.append(create_probe(base))
    say("   creating a file: " + ", ".join(f"{p['median_us']:.0f} µs" for p in probes)
        + " (median, before and after)")
    return {"tasks": tasks, "rounds": rounds, "times": times, "errors": errors, "probes": probes,
            "missing": [name for name, have in (("tsp", have_tsp), ("parallel", have_parallel))
                        if not have]}


# -- report ------------------------------------------------------------------------------

def ms(result: dict | None) -> str:
    if not result:
        return "n/a"
    return (f"{result['mean'] * 1e3:.1f} ± {result['stddev'] * 1e3:.1f} ms "
            f"(median {result['median'] * 1e3:.1f})")


def verdict(value: float | None, goal: float | None) -> str:
    if value is None:
        return "ERROR"
    if goal is None:
        return "—"
    return "ok" if value <= goal else "MISSED"


def report(data: dict) -> str:
    lines: list[str] = []
    rows: list[tuple] = []   # figure, ostracker, baseline, ratio means, ratio medians, goal, met
    add = lines.append
    add("== ostracker history benchmarks ==")
    for key in ("when", "machine", "python", "hyperfine", "tsp", "parallel", "state_fs",
                "load_before", "load_after"):
        if key in data:
            add(f"{key:12} {data[key]}")

    add("")
    add("1. status and completion over N ended single jobs + 1 running `sleep 600` "
        "(hyperfine -N; mean ± σ, median)")
    for part in data.get("singles", []):
        n, made, results = part["n"], part["made"], part["results"]
        add(f"  N = {n:,}: made in {made['total_s']:.1f} s ({made['submit_s']:.1f} s of add_job, "
            f"{made['submit_s'] / n * 1e3:.1f} ms a job; {made['wait_s']:.1f} s of wait_jobs); "
            f"completion offered {part['offered']} candidate(s); timed at load {part['load']}")
        for check in part["checks"]:
            add(f"    ODD: {check}")
        if not results:
            add("    hyperfine failed (see the log)")
            for title, goal in (("status --json", GOAL_JSON), ("status --active", GOAL_FILTERED),
                                ("status -q --state Running", GOAL_FILTERED)):
                rows.append((f"{title}, {n:,} ended + 1 running", "n/a", "n/a", "n/a", "n/a",
                             f"≤ {goal}", "ERROR"))
            continue
        floor = results[0]
        add(f"    {'python -c import click':28} {ms(floor)}")
        for result, goal in zip(results[1:4], (GOAL_JSON, GOAL_FILTERED, GOAL_FILTERED)):
            rmean = result["mean"] / floor["mean"]
            rmedian = result["median"] / floor["median"]
            add(f"    {result['command']:28} {ms(result)}  ratio {rmean:.2f} (medians "
                f"{rmedian:.2f}), goal ≤ {goal}: {verdict(rmean, goal)}")
            rows.append((f"`{result['command']}`, {n:,} ended + 1 running", ms(result), ms(floor),
                         f"{rmean:.2f}", f"{rmedian:.2f}", f"≤ {goal}", verdict(rmean, goal)))
        comp = results[4]
        cmean, cmedian = comp["mean"] / floor["mean"], comp["median"] / floor["median"]
        met = verdict(comp["mean"] * 1e3, GOAL_COMPLETE_MS)
        add(f"    {'complete `suspend ` (TAB)':28} {ms(comp)}  ratio {cmean:.2f}, "
            f"goal < {GOAL_COMPLETE_MS} ms: {met}")
        rows.append((f"TAB completion of `suspend`, {n:,} ended + 1 running", ms(comp), ms(floor),
                     f"{cmean:.2f}", f"{cmedian:.2f}", f"< {GOAL_COMPLETE_MS} ms", met))

    add("")
    add("2. files left in the state dir (find -type f; du -sb apparent bytes; du disk usage)")
    arr = data.get("array_files")
    file_rows = []
    if arr:
        file_rows.append((f"ended array of {arr['tasks']:,} /bin/true tasks "
                          f"(made in {arr['seconds']:.1f} s)", arr["tasks"], arr["files"]))
        if arr.get("error"):
            add(f"    ERROR: {arr['error']}")
    for part in data.get("singles", []):
        file_rows.append((f"{part['n']:,} ended single jobs", part["n"], part["files"]))
    for label, jobs, files in file_rows:
        add(f"    {label}: {files['files']:,} files ({files['files'] / jobs:.4g} a job), "
            f"{files['bytes']:,} bytes ({files['bytes'] / jobs:,.0f} a job), "
            f"{kib(files['disk_bytes'])} on disk")
        rows.append((f"files left: {label}", f"{files['files']:,} files, {kib(files['bytes'])}",
                     "—", f"{files['files'] / jobs:.4g} files a job",
                     f"{files['bytes'] / jobs:,.0f} bytes a job", "— (report only)", "—"))
    for part in data.get("singles", []):
        if part.get("listing_bytes") is not None:
            add(f"    and after the listings above, the listing `status --json` kept of "
                f"{part['n']:,} ended jobs: {kib(part['listing_bytes'])}")

    add("")
    quiet = data.get("wait")
    if quiet:
        floor = quiet["floor"]
        add(f"3. a wait on a {quiet['seconds']:g} s job (os.wait4 rusage of the command)")
        add(f"    floor, python -c 'import click': {floor['nvcsw']} voluntary switch(es), "
            f"{floor['cpu_ms']:.0f} ms CPU (fewest of 5)")
        for label, key in ((f"ostracker wait ID ({quiet['wait']['job']})", "wait"),
                           (f"ostracker submit --wait -- sleep {quiet['seconds']:g}",
                            "submit_wait")):
            got = quiet[key]
            ok = verdict(got["nvcsw"], GOAL_SWITCHES) if got["exit"] == 0 else "ERROR"
            add(f"    {label}: {got['nvcsw']} voluntary switches ({got['nivcsw']} involuntary), "
                f"{got['cpu_ms']:.0f} ms CPU, {got['wall_s']:.2f} s wall, exit {got['exit']}; "
                f"goal ≤ {GOAL_SWITCHES} switches: {ok}")
            if got["exit"] != 0:
                add(f"      stdout {got['stdout'][:200]!r}, stderr {got['stderr'][:300]!r}")
            rows.append((f"`{label.split(' (')[0]}` on a {quiet['seconds']:g} s job",
                         f"{got['nvcsw']} switches, {got['cpu_ms']:.0f} ms CPU",
                         f"{floor['nvcsw']} switch(es), {floor['cpu_ms']:.0f} ms CPU "
                         "(import click)",
                         "—", "—", f"≤ {GOAL_SWITCHES} switches", ok))

    add("")
    rounds = data.get("rounds")
    if rounds:
        times = rounds["times"]
        add(f"4. array of {rounds['tasks']:,} /bin/true, 4 at a time, {rounds['rounds']} rounds "
            "after 1 warm-up (seconds, wall clock through sh -c)")
        names = [name for name in times if times[name]]
        add("    round  " + "  ".join(f"{name:>9}" for name in names))
        for i in range(rounds["rounds"]):
            add(f"    {i + 1:5}  " + "  ".join(
                f"{times[name][i]:9.3f}" if i < len(times[name]) else f"{'—':>9}"
                for name in names))
        xs = times["xargs"]
        for name in names:
            got = times[name]
            med = statistics.median(got)
            per_round = [a / b for a, b in zip(got, xs)] if xs else []
            ratio = statistics.median(per_round) if per_round and len(got) == len(xs) else None
            of_medians = med / statistics.median(xs) if xs else None
            add(f"    {name:9} median {med:.3f} s, min {min(got):.3f} s"
                + ("" if name == "xargs" or ratio is None else
                   f"; ratio to xargs: median of rounds {ratio:.2f}, of medians {of_medians:.2f}"))
            if name == "xargs":
                continue
            goal = GOAL_ARRAY if name == "ostracker" else None
            label = {"ostracker": f"`submit --array 1-{rounds['tasks']} --max-parallel 4 --wait`",
                     "tsp": "task-spooler `tsp -S 4` (a `tsp` per task, `tsp -w`)",
                     "parallel": "`seq | parallel -j4 /bin/true`"}[name]
            rows.append((f"array of {rounds['tasks']:,} /bin/true: {label}",
                         f"median {med:.3f} s", f"median {statistics.median(xs):.3f} s (xargs -P4)",
                         "n/a" if ratio is None else f"{ratio:.2f} (median of rounds)",
                         "n/a" if of_medians is None else f"{of_medians:.2f}",
                         f"≤ {goal}" if goal else "— (report only)",
                         verdict(ratio, goal) if ratio is not None else "ERROR"))
        probes = rounds.get("probes") or []
        if probes:
            add("    creating one empty file in the state dirs' file system: "
                + " before, ".join(f"median {p['median_us']:.0f} µs (mean {p['mean_us']:.0f})"
                                    for p in probes) + " after the rounds")
        for name in rounds["missing"]:
            add(f"    {name}: not installed, left out")
        for error in rounds["errors"]:
            add(f"    ERROR: {error}")

    if data.get("notes"):
        add("")
        for note in data["notes"]:
            add(f"note: {note}")

    add("")
    add("### Markdown")
    add("")
    head = ("figure", "ostracker", "baseline", "ratio (means)", "ratio (medians)", "goal", "met")
    add("| " + " | ".join(head) + " |")
    add("|" + "---|" * len(head))
    for row in rows:
        add("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |")
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------------

def machine(venv: str) -> dict:
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                  if line.startswith("model name")), "?")

    def out(argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True).stdout.strip()
        except OSError:
            return "not installed"

    python = os.path.join(venv, "bin", "python")
    return {
        "when": out(["date", "-Is"]),
        "machine": f"{os.cpu_count()} CPUs ({model}), Linux {os.uname().release}",
        "python": out([python, "-c", "import platform, click; print(platform.python_version(), "
                                     "'click', __import__('importlib.metadata').metadata."
                                     "version('click'))"]) + " (bench venv, regular install)",
        "hyperfine": out(["hyperfine", "--version"]),
        "tsp": (out(["sh", "-c", "tsp -V 2>&1 | head -n 1"]) if shutil.which("tsp")
                else "not installed"),
        "parallel": (out(["sh", "-c", "parallel --version | head -n 1"])
                     if shutil.which("parallel") else "not installed"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", default="1000,10000",
                        help="N of ended single jobs for figures 1 and 2, comma-separated "
                             "[1000,10000]")
    parser.add_argument("--runs", type=int, default=20, help="hyperfine runs per command [20]")
    parser.add_argument("--warmup", type=int, default=3, help="hyperfine warm-up runs [3]")
    parser.add_argument("--array-files", type=int, default=10000,
                        help="tasks of the array whose files are counted [10000]")
    parser.add_argument("--wait-seconds", type=float, default=5, help="length of the job "
                        "`wait` waits for [5]")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds of figure 4 [5]")
    parser.add_argument("--array-tasks", type=int, default=1000, help="tasks in figure 4 [1000]")
    parser.add_argument("--base", default=os.environ.get("OSTRACKER_BENCH_BASE", "/var/tmp"),
                        help="where the work dir (state dirs, throw-away venv) goes; not a "
                             "tmpfs [$OSTRACKER_BENCH_BASE or /var/tmp]")
    parser.add_argument("--out", default=os.environ.get("OSTRACKER_BENCH_OUT"),
                        help="keep the report, hyperfine JSON and log in this dir "
                             "[$OSTRACKER_BENCH_OUT]")
    parser.add_argument("--only", default="1,2,3,4", help="figures to run, e.g. 1,4 [all]")
    parser.add_argument("--quick", action="store_true", help="a small run: --jobs 1000 "
                        "--runs 10 --warmup 1 --array-files 1000 --rounds 2")
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.runs, args.warmup, args.array_files, args.rounds = "1000", 10, 1, 1000, 2
    jobs = [int(n) for n in args.jobs.split(",") if n.strip()]
    only = {int(n) for n in args.only.split(",") if n.strip()}
    if shutil.which("hyperfine") is None and 1 in only:
        raise SystemExit("history.py: hyperfine is not installed")

    work = tempfile.mkdtemp(prefix="osb-history-", dir=args.base)
    base = os.path.join(work, "s")  # every state dir, tsp and parallel dir is under here
    os.mkdir(base, 0o700)
    log = open(os.path.join(work, "log"), "w")
    running: list = []       # (Ost, job ID) of `sleep 600` jobs not yet terminated
    tsp_envs: list = []      # environments of tsp servers not yet killed
    started = time.monotonic()

    def interrupted(signum, frame):
        raise Interrupted(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)
    status = 0
    try:
        say(f"-- work dir {work}; installing ostracker from {TREE} (regular install)")
        venv = make_venv(work, log)
        data = machine(venv)
        fs = subprocess.run(["df", "-T", base], capture_output=True, text=True).stdout
        data["state_fs"] = f"{fs.splitlines()[-1].split()[1]} ({args.base})"
        data["load_before"] = " ".join(open("/proc/loadavg").read().split()[:3])
        data["notes"] = []
        if 1 in only or 2 in only:
            data["singles"] = [many_jobs(venv, base, work, log, n, args, data["notes"], running)
                               for n in jobs]
        if 2 in only:
            data["array_files"] = array_files(venv, base, work, args.array_files)
        if 3 in only:
            data["wait"] = quiet_wait(venv, base, work, args.wait_seconds)
        if 4 in only:
            data["rounds"] = array_rounds(venv, base, work, args.rounds, args.array_tasks,
                                          tsp_envs)
        data["load_after"] = " ".join(open("/proc/loadavg").read().split()[:3])
        data["notes"].append("ratios are ostracker / baseline; 'met' holds the ratio of means "
                             "(figure 4: the median of the rounds' ratios) against the goal")
        data["notes"].append(f"benchmarks took {time.monotonic() - started:.0f} s")
        text = report(data)
        print(text)
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            with open(os.path.join(args.out, "report.txt"), "w") as handle:
                handle.write(text + "\n")
            with open(os.path.join(args.out, "data.json"), "w") as handle:
                json.dump(data, handle, indent=1, default=str)
    except (KeyboardInterrupt, Interrupted) as why:
        say(f"history.py: interrupted ({why or 'SIGINT'}); cleaning up")
        status = 130
    except RuntimeError as error:
        say(f"history.py: {error}")
        status = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for ost, job in running:
            ost.run("terminate", job)
        for env in tsp_envs:
            subprocess.run(["tsp", "-K"], env=env, capture_output=True)
        for name in os.listdir(base):
            helper.wait_reapers(os.path.join(base, name), 5)
        helper.cleanup(base)   # kills (by PID) any reaper left under base, and its tasks
        log.close()
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            for name in os.listdir(work):
                if name == "log" or name.endswith(".json"):
                    shutil.copy(os.path.join(work, name), args.out)
        say(f"-- removing {work}")
        shutil.rmtree(work, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
