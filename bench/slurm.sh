#!/usr/bin/env bash
# The Slurm backend side by side with the local one and with Slurm's own sbatch.
#
#   bash bench/slurm.sh
#
# Uses the cluster that $SLURM_CONF names if it answers, else starts a throw-away
# one with scripts/slurm-cluster (and stops it at the end).  Needs hyperfine.
# Environment: OSTRACKER_BENCH_RUNS (default 20) runs for the submit latencies,
# OSTRACKER_BENCH_ARRAY_RUNS (default 2) for the 100-task arrays.
set -uo pipefail

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRC=$(cd "$BENCH/.." && pwd)
RUNS=${OSTRACKER_BENCH_RUNS:-20}
ARRAY_RUNS=${OSTRACKER_BENCH_ARRAY_RUNS:-2}
command -v hyperfine >/dev/null || { echo "slurm.sh: hyperfine is not installed" >&2; exit 1; }

WORK=$(mktemp -d -t ostracker-slurm-bench.XXXXXX) || exit 1
CLUSTER=""
cleanup() {
    [[ -n $CLUSTER ]] && "$SRC/scripts/slurm-cluster" stop "$CLUSTER"
    scancel --user="$(id -un)" --name=ostracker-bench 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT

if ! timeout 15 sinfo -h -o %T 2>/dev/null | grep -qE 'idle|mixed|allocated'; then
    CLUSTER="$WORK/cluster"
    eval "$("$SRC/scripts/slurm-cluster" start "$CLUSTER")" || exit 1
fi
CPUS=$(sinfo -h -o %C | cut -d/ -f4)   # A/I/O/T: the total
echo "-- cluster: $(sinfo -h -o '%D node(s), %c CPUs each') ($CPUS CPUs in all)" >&2

echo "-- installing ostracker (regular install) into a throw-away venv" >&2
python3 -m venv "$WORK/venv" && "$WORK/venv/bin/pip" install -q "$SRC" || exit 1
OST="$WORK/venv/bin/ostracker"
export OSTRACKER_STATE_DIR="$WORK/state"
mkdir -p "$WORK/out" && cd "$WORK/out" || exit 1

hyperfine --style basic -N --warmup 2 --runs "$RUNS" --export-markdown "$WORK/submit.md" \
    -n "sbatch --wrap true" "sbatch --parsable -J ostracker-bench -o /dev/null --wrap true" \
    -n "ostracker --backend slurm submit" "$OST --backend slurm submit -n ostracker-bench -o /dev/null -- /bin/true" \
    -n "ostracker submit (local)" "$OST submit -- /bin/true" >&2 || exit 1
# The Slurm jobs above run meanwhile: let them drain before timing the arrays.
for _ in $(seq 300); do
    [[ -z $(squeue -h --name=ostracker-bench -o %i) ]] && break; sleep 0.1
done

hyperfine --style basic -N --runs "$ARRAY_RUNS" --export-markdown "$WORK/array.md" \
    -n "sbatch --array=1-100 --wait" "sbatch --parsable -J ostracker-bench -o /dev/null --array=1-100 --wait --wrap true" \
    -n "ostracker --backend slurm submit --array 1-100 --wait" "$OST --backend slurm submit -n ostracker-bench -o /dev/null --array 1-100 --wait -- /bin/true" \
    -n "ostracker submit --array 1-100 --max-parallel $CPUS --wait (local)" "$OST submit --array 1-100 --max-parallel $CPUS --wait -- /bin/true" >&2 || exit 1

echo
echo "Submit latency ($RUNS runs):"; echo; cat "$WORK/submit.md"; echo
echo "A 100-task array of /bin/true, submit to the end ($ARRAY_RUNS runs):"; echo; cat "$WORK/array.md"
