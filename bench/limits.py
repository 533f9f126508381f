"""Limit benchmarks (README, "Limits and retries"): how late a time limit fires, and what
timers cost a reaper.

    python3 bench/limits.py                    # a throw-away venv with `pip install .`
    OSTRACKER_BENCH_VENV=DIR python3 bench/limits.py

1. 50 jobs with ``-t 1s`` whose TERM trap writes the moment SIGTERM arrived:
   lateness = that moment - (dispatch_time + 1 s), median and p95.
2. The PSS of the reaper of an array of 1,000 running ``sleep`` tasks, with
   ``-t 10m --signal USR1@60`` (a timer per task: the warning, which arms the limit)
   and without.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scheduling import Ostracker, percentiles, pss_kib, venv  # noqa: E402

JOBS = 50
TASKS = 1000


def lateness(cli: Ostracker, work: str) -> list[float]:
    ids = []
    for i in range(JOBS):
        path = os.path.join(work, f"term-{i}")
        body = f'trap "date +%s%N > {path}; exit 0" TERM; while :; do sleep 0.01; done'
        ids.append((cli("submit", "-t", "1s", "--", "bash", "-c", body), path))
    cli("wait", *[job for job, _ in ids], check=False)
    late = []
    for job, path in ids:
        dispatched = json.loads(cli("info", job, "--json"))["dispatch_time"]
        term = int(open(path).read()) / 1e9
        late.append(term - datetime.fromisoformat(dispatched).timestamp() - 1.0)
    return late


def reaper_pss(cli: Ostracker, *options) -> float:
    array = cli("submit", "--array", f"1-{TASKS}", *options, "--", "sleep", "600")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        running = cli("status", "-q", "--state", "Running", array).split()
        if len(running) == TASKS:
            break
        time.sleep(0.5)
    record = json.load(open(os.path.join(cli.state, "jobs", array, "1.json")))
    kib = pss_kib(record["reaper_pid"])
    cli("terminate", array)
    return kib / 1024


def main() -> None:
    base = tempfile.mkdtemp(prefix="osb-limits-")
    bin_dir = os.path.join(venv(), "bin")
    print(f"work: {base}; cores: {os.cpu_count()}; load: {os.getloadavg()[0]:.2f}")
    try:
        print(f"-t 1s fires late by: {percentiles(lateness(Ostracker(bin_dir, base + '/a'), base))}")
        plain = reaper_pss(Ostracker(bin_dir, base + "/b"))
        timed = reaper_pss(Ostracker(bin_dir, base + "/c"), "-t", "10m", "--signal", "USR1@60")
        print(f"reaper of {TASKS} running tasks: PSS {plain:.1f} MiB without timers, "
              f"{timed:.1f} MiB with -t and --signal")
    finally:
        subprocess.run(["pkill", "-f", base], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
