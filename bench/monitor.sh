#!/usr/bin/env bash
# `ostracker monitor --json` against `ps -eo pid,user,etime,pcpu,rss,args`: one
# snapshot of every process on the machine, by each, measured with hyperfine.
#
#   bash bench/monitor.sh
#
# ostracker is measured from a regular (non-editable) install in a throw-away venv:
# an editable install adds its own import overhead.  For context, the time a bare
# `python -c 'import psutil'` takes in that venv is measured too: what is left of
# ostracker's time beyond it is the snapshot itself, JSON and click.
#
# Environment (all optional):
#   OSTRACKER_BENCH_RUNS  runs per command (default 30)
#   PYTHON                interpreter for the venv (default python3)
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SYSPY=${PYTHON:-python3}
RUNS=${OSTRACKER_BENCH_RUNS:-30}

command -v hyperfine >/dev/null || { echo "monitor.sh: hyperfine is not installed" >&2; exit 1; }
WORK=$(mktemp -d -t ostracker-monitor-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
cd "$WORK"   # so that `python -c` never finds the source tree on sys.path

echo "-- installing ostracker from $SRC (regular install)" >&2
mkdir "$WORK/src"
tar -C "$SRC" --exclude=./.git --exclude=./.venv --exclude=./build --exclude='*.egg-info' \
    --exclude=__pycache__ --exclude=./.pytest_cache --exclude=./bench -cf - . |
    tar -C "$WORK/src" -xf -
"$SYSPY" -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install -q "$WORK/src" >"$WORK/pip.log" 2>&1 ||
    { echo "monitor.sh: pip install failed:" >&2; tail -n 20 "$WORK/pip.log" >&2; exit 1; }
PY="$WORK/venv/bin/python"
OST="$WORK/venv/bin/ostracker"
case $("$PY" -c 'import ostracker; print(ostracker.__file__)') in
    "$WORK/venv"/*) ;;
    *) echo "monitor.sh: ostracker is not imported from the venv" >&2; exit 1 ;;
esac

processes=$("$OST" monitor --json | "$PY" -c 'import json, sys; print(len(json.load(sys.stdin)))')
echo "-- $processes processes on $(uname -n), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2

hyperfine -N --style basic --warmup 3 --runs "$RUNS" --export-json "$WORK/monitor.json" \
    -n "ps -eo pid,user,etime,pcpu,rss,args" "ps -eo pid,user,etime,pcpu,rss,args" \
    -n "ostracker monitor --json" "$OST monitor --json" \
    -n "ostracker monitor (table)" "$OST monitor" \
    -n "python -c 'import psutil'" "$PY -c 'import psutil'" >&2

"$PY" - "$WORK/monitor.json" "$processes" <<'EOF'
import json
import sys

results = {r["command"]: r for r in json.load(open(sys.argv[1]))["results"]}
ps = results["ps -eo pid,user,etime,pcpu,rss,args"]["mean"]
print(f"\nmonitor over {sys.argv[2]} processes (mean ± sd of {len(next(iter(results.values()))['times'])} runs)")
for name, result in results.items():
    print(f"  {name:38} {result['mean'] * 1000:7.1f} ms ± {result['stddev'] * 1000:5.1f}"
          f"   {result['mean'] / ps:5.1f} × ps")
ours = results["ostracker monitor --json"]["mean"]
base = results["python -c 'import psutil'"]["mean"]
print(f"ratio ostracker monitor --json / ps: {ours / ps:.1f}")
print(f"beyond python + psutil start-up: {(ours - base) * 1000:.1f} ms"
      f" ({(ours - base) / int(sys.argv[2]) * 1e6:.0f} µs per process)")
EOF
