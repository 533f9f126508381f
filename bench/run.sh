#!/usr/bin/env bash
# Benchmarks of ostracker against plain baselines; see bench/README.md.
#
#   bash bench/run.sh
#
# Environment (all optional):
#   OSTRACKER_BENCH_VENV  venv to use instead of a throw-away one.  Created (and kept) if
#                         missing; if it exists, ostracker is reinstalled into it
#                         (--no-deps --force-reinstall) so that it measures this tree.
#   OSTRACKER_BENCH_OUT   directory to keep the hyperfine JSON exports, logs and report in.
#   OSTRACKER_BENCH_RUNS  runs per command for the short benchmarks (default 30).
#   OSTRACKER_BENCH_ARRAY_RUNS  runs per command for the 1000-task array (default 5).
#   PYTHON                interpreter for the venv (default python3).
set -uo pipefail

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRC=$(cd "$BENCH/.." && pwd)
HELPER="$BENCH/helper.py"
SYSPY=${PYTHON:-python3}
RUNS=${OSTRACKER_BENCH_RUNS:-30}
ARRAY_RUNS=${OSTRACKER_BENCH_ARRAY_RUNS:-5}
START=$SECONDS

command -v hyperfine >/dev/null || { echo "run.sh: hyperfine is not installed" >&2; exit 1; }

WORK=$(mktemp -d -t ostracker-bench.XXXXXX) || exit 1
LOG="$WORK/log"
MEM_JOB_PID=""       # the `sleep 30` job of benchmark 4, killed on exit if still alive
IDLE_PID=""          # the idle interpreter used as the memory baseline

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [[ -n $MEM_JOB_PID ]] && kill -0 "$MEM_JOB_PID" 2>/dev/null; then
        kill -KILL "$MEM_JOB_PID" 2>/dev/null
    fi
    if [[ -n $IDLE_PID ]] && kill -0 "$IDLE_PID" 2>/dev/null; then
        kill -KILL "$IDLE_PID" 2>/dev/null; wait "$IDLE_PID" 2>/dev/null
    fi
    # Reapers end by themselves once their tasks have; give them a moment, then kill
    # (by PID) any that is left: they are recognised by a state dir under $WORK.
    for dir in "$WORK"/s*; do
        [[ -d $dir ]] && "$SYSPY" "$HELPER" wait-reapers "$dir" 5 2>/dev/null
    done
    "$SYSPY" "$HELPER" cleanup "$WORK"
    if [[ -n ${OSTRACKER_BENCH_OUT:-} ]]; then
        mkdir -p "$OSTRACKER_BENCH_OUT" && cp -f "$WORK"/*.json "$LOG" "$OSTRACKER_BENCH_OUT"/ 2>/dev/null
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say() { printf '%s\n' "$*" >&2; }
q() { printf '%q' "$1"; }   # quote one word for a hyperfine command line

# Run hyperfine with its output in the log; on failure show the end of the log.
bench() {
    local label=$1; shift
    say "-- $label"
    printf '\n==== %s\n' "$label" >>"$LOG"
    if ! hyperfine --style basic "$@" >>"$LOG" 2>&1; then
        say "   FAILED; end of the log:"; tail -n 15 "$LOG" | sed 's/^/   | /' >&2
        return 1
    fi
}

cd "$WORK" || exit 1   # so that `python -c` never finds the source tree on sys.path
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

# -- a regular (non-editable) install -------------------------------------------
say "-- installing ostracker from $SRC (regular install)"
mkdir "$WORK/src"
tar -C "$SRC" --exclude=./.git --exclude=./.venv --exclude=./build --exclude='*.egg-info' \
    --exclude=__pycache__ --exclude=./.pytest_cache --exclude=./bench -cf - . |
    tar -C "$WORK/src" -xf - || exit 1
if [[ -n ${OSTRACKER_BENCH_VENV:-} ]]; then
    VENV=$OSTRACKER_BENCH_VENV
    if [[ -x $VENV/bin/python ]]; then
        "$VENV/bin/pip" install -q --no-deps --force-reinstall "$WORK/src" >>"$LOG" 2>&1
    else
        "$SYSPY" -m venv "$VENV" && "$VENV/bin/pip" install -q "$WORK/src" >>"$LOG" 2>&1
    fi
else
    VENV="$WORK/venv"
    "$SYSPY" -m venv "$VENV" && "$VENV/bin/pip" install -q "$WORK/src" >>"$LOG" 2>&1
fi || { say "run.sh: pip install failed:"; tail -n 20 "$LOG" >&2; exit 1; }
PY="$VENV/bin/python"
OST="$VENV/bin/ostracker"
where=$("$PY" -c 'import ostracker; print(ostracker.__file__)')
case $where in
    "$VENV"/*) ;;
    *) say "run.sh: ostracker is imported from $where, not from the venv (editable install?)"; exit 1 ;;
esac

# -- 1. an array of 1000 /bin/true tasks, 4 at a time -----------------------------
# Each run gets a fresh, empty state dir: the prepare step waits for the previous
# run's reaper to end (its flock on reaper.lock), then puts the directory aside.
S1="$WORK/s1"
OSTRACKER_STATE_DIR=$S1 bench "1. array of 1000 /bin/true vs xargs -P4 ($ARRAY_RUNS runs each)" \
    --warmup 1 --runs "$ARRAY_RUNS" \
    --prepare "$(q "$SYSPY") $(q "$HELPER") fresh $(q "$S1")" \
    --export-json "$WORK/h1.json" \
    -n "ostracker submit --array 1-1000 --max-parallel 4 --wait -- /bin/true" \
    "$(q "$OST") submit --array 1-1000 --max-parallel 4 --wait -- /bin/true" \
    -n "seq 1000 | xargs -P4 -n1 /bin/true" \
    "seq 1000 | xargs -P4 -n1 /bin/true"
"$SYSPY" "$HELPER" wait-reapers "$S1"  # deleted at exit: deleting now would slow the next figure

# -- 2. latency of submit ---------------------------------------------------------
S2="$WORK/s2"; mkdir -m 700 "$S2"
OSTRACKER_STATE_DIR=$S2 bench "2. submit latency, 0.05 s pause before each run ($RUNS runs)" \
    -N --warmup 3 --runs "$RUNS" --prepare 'sleep 0.05' \
    --export-json "$WORK/h2p.json" \
    -n "python -c 'import click'" "$(q "$PY") -c 'import click'" \
    -n "ostracker submit -- /bin/true" "$(q "$OST") submit -- /bin/true"
"$SYSPY" "$HELPER" wait-reapers "$S2"
OSTRACKER_STATE_DIR=$S2 bench "2b. submit latency, back to back ($RUNS runs)" \
    -N --warmup 3 --runs "$RUNS" \
    --export-json "$WORK/h2n.json" \
    -n "python -c 'import click'" "$(q "$PY") -c 'import click'" \
    -n "ostracker submit -- /bin/true" "$(q "$OST") submit -- /bin/true"
"$SYSPY" "$HELPER" wait-reapers "$S2"  # deleted at exit: deleting now would slow the next figure

# -- 3. status --json and info over 5000 finished tasks ---------------------------
S3="$WORK/s3"; mkdir -m 700 "$S3"
say "-- 3. making 5000 finished tasks"
t0=$EPOCHREALTIME
ARRAY_ID=$(OSTRACKER_STATE_DIR=$S3 "$OST" submit --array 1-5000 --max-parallel 8 --wait -- /bin/true)
array_status=$?
"$SYSPY" "$HELPER" wait-reapers "$S3"   # the reaper writes summary.json as it leaves
MAKE_SECONDS=$("$SYSPY" -c "print($EPOCHREALTIME - $t0)")
RECORDS=$(OSTRACKER_STATE_DIR=$S3 "$OST" status --json | "$PY" -c 'import json, sys; print(len(json.load(sys.stdin)))')
if [[ $array_status -eq 0 && $RECORDS -eq 5000 ]]; then
    OSTRACKER_STATE_DIR=$S3 bench "3. status --json / info $ARRAY_ID.2500 ($RUNS runs)" \
        -N --warmup 3 --runs "$RUNS" \
        --export-json "$WORK/h3.json" \
        -n "python -c 'import click'" "$(q "$PY") -c 'import click'" \
        -n "ostracker status --json" "$(q "$OST") status --json" \
        -n "ostracker info $ARRAY_ID.2500" "$(q "$OST") info $ARRAY_ID.2500"
else
    say "   the array of 5000 did not end as expected (exit $array_status, $RECORDS records)"
fi

# -- 4. the reaper's memory -------------------------------------------------------
S4="$WORK/s4"; mkdir -m 700 "$S4"
say "-- 4. reaper memory"
mem_error=""
if JOB_ID=$(OSTRACKER_STATE_DIR=$S4 "$OST" submit -- sleep 30); then
    MEM_JOB_PID=$(OSTRACKER_STATE_DIR=$S4 "$OST" info --json "$JOB_ID" |
                  "$PY" -c 'import json, sys; print(json.load(sys.stdin)["pid"])')
    REAPER=$("$SYSPY" "$HELPER" parent "$MEM_JOB_PID")
    # submit returns once the job started, possibly before the reaper has exec'd its
    # lean interpreter: wait for that, then let it finish its imports.
    for _ in $(seq 100); do
        grep -qa ostracker.local.reaper "/proc/$REAPER/cmdline" 2>/dev/null && break
        sleep 0.05
    done
    sleep 0.5
    if grep -qa ostracker.local.reaper "/proc/$REAPER/cmdline" 2>/dev/null; then
        reaper_mem=$("$SYSPY" "$HELPER" mem "$REAPER")
    else
        mem_error="process $REAPER (parent of job PID $MEM_JOB_PID) does not look like a reaper"
    fi
    # Baseline: an idle interpreter started the way the reaper's is (-I -S).
    "$PY" -I -S -c 'import time; time.sleep(30)' & IDLE_PID=$!
    sleep 0.5
    idle_mem=$("$SYSPY" "$HELPER" mem "$IDLE_PID")
    kill "$IDLE_PID"; wait "$IDLE_PID" 2>/dev/null; IDLE_PID=""
    if ! OSTRACKER_STATE_DIR=$S4 "$OST" terminate "$JOB_ID" >>"$LOG" 2>&1; then
        say "   'ostracker terminate $JOB_ID' failed; killing the job's process"
        kill "$MEM_JOB_PID" 2>/dev/null
    fi
    if ! "$SYSPY" "$HELPER" wait-reapers "$S4" 10; then
        say "   reaper $REAPER did not end; killing it"; kill -KILL "$REAPER" 2>/dev/null
    fi
    MEM_JOB_PID=""
else
    mem_error="submit -- sleep 30 failed"
fi
if [[ -z $mem_error ]]; then
    printf '{"reaper": %s, "baseline": %s}\n' "$reaper_mem" "$idle_mem" >"$WORK/mem.json"
else
    say "   $mem_error"
    "$PY" -c 'import json, sys; print(json.dumps({"error": sys.argv[1]}))' "$mem_error" >"$WORK/mem.json"
fi

# -- report ---------------------------------------------------------------------
"$PY" - "$WORK/meta.json" "$LOAD_BEFORE" "$(cut -d' ' -f1-3 /proc/loadavg)" \
      "$MAKE_SECONDS" "$RECORDS" "$ARRAY_ID" "$((SECONDS - START))" <<'EOF'
import json, os, platform, subprocess, sys
out, load_before, load_after, make_s, records, array_id, elapsed = sys.argv[1:]
model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
json.dump({
    "when": subprocess.run(["date", "-Is"], capture_output=True, text=True).stdout.strip(),
    "machine": f"{os.cpu_count()} CPUs ({model}), Linux {platform.release()}",
    "python": f"{platform.python_implementation()} {platform.python_version()} (bench venv, regular install)",
    "hyperfine": subprocess.run(["hyperfine", "--version"], capture_output=True, text=True).stdout.strip(),
    "load_before": load_before, "load_after": load_after,
    "notes": [
        f"the 5000 finished tasks (array {array_id}, 8 at a time) took {float(make_s):.1f} s to make; "
        f"status --json lists {records} records",
        "ratios are ostracker / baseline; 'met' compares the ratio of means with the goal",
        "all figures are wall-clock; other work on the machine (e.g. concurrent test suites) makes them noisy",
        f"benchmarks took {elapsed} s",
    ],
}, open(out, "w"), indent=1)
EOF
if [[ -n ${OSTRACKER_BENCH_OUT:-} ]]; then
    mkdir -p "$OSTRACKER_BENCH_OUT"
    "$SYSPY" "$HELPER" report "$WORK" | tee "$OSTRACKER_BENCH_OUT/report.txt"
else
    "$SYSPY" "$HELPER" report "$WORK"
fi
