#!/usr/bin/env bash
# One evaluator run inside a Slurm job, made preemption-safe. Called by
# gpu-node.sbatch and shard-array.sbatch:
#
#   run-evaluator.sh RUN_DIR [more `run` flags, e.g. --shard 2/8]
#
# Environment: VALBENCH_CONFIG (the run config TOML, required), VALBENCH_RUN_ARGS
# (more `run` flags, split on spaces), VALBENCH_METRICS_PORT (below),
# VALBENCH_MAX_REQUEUES (20), and those of valbench-env.sh.
#
# Metrics: with VALBENCH_METRICS_PORT=P the evaluator serves Prometheus metrics on
# all interfaces at port P + the array task id (tasks sharing a node do not
# collide), and the target is announced for Prometheus's file-based discovery as
# a JSON file in VALBENCH_METRICS_DIR (default $VALBENCH_OUT/metrics-targets)
# while the run lasts (deploy/slurm/prometheus-slurm.yml reads them).
#
# Every start passes --resume: the first start begins the run, a restart continues
# it from the checkpoint in RUN_DIR, so the job always runs the same command.
#
# On SIGTERM (the time-limit warning of `--signal=B:TERM@120`, a preemption,
# `scancel --signal=TERM --batch|--full`) the evaluator finishes its in-flight
# calls, records them and exits 75; this script then requeues the job, which
# starts again later and resumes. Exit 0: the run is complete. Other codes are
# the evaluator's (2 bad input, 3 endpoint refused for good, 5 disk): no requeue,
# since running again would fail the same way.
set -uo pipefail

here=$(dirname "${BASH_SOURCE[0]}")
# shellcheck source=valbench-env.sh
. "$here/valbench-env.sh"

if [ $# -lt 1 ]; then
    echo "usage: $0 RUN_DIR [run flags...]" >&2
    exit 2
fi
out=$1
shift
config=${VALBENCH_CONFIG:?set VALBENCH_CONFIG to the run config (TOML)}
read -r -a extra <<<"${VALBENCH_RUN_ARGS:-}"
mkdir -p "$out"
echo "valbench: job ${SLURM_JOB_ID:-none} (restart ${SLURM_RESTART_COUNT:-0}) on $(hostname): $out"

# The evaluator must see exactly one TERM: a second one means "stop at once, skip
# the drain". A TERM may come to this script alone (the time-limit warning with
# B:, `scancel --batch`) or to every process of the job at once (`scancel --full`,
# some preemption set-ups), and bash cannot tell which. A small watcher child can:
# if it was signalled too, the evaluator already has its TERM, so it is not sent
# a second one.
metrics=()
target_file=
if [ -n "${VALBENCH_METRICS_PORT:-}" ]; then
    port=$((VALBENCH_METRICS_PORT + ${SLURM_ARRAY_TASK_ID:-0}))
    metrics=(--metrics-host 0.0.0.0 --metrics-port "$port")
    job_name=${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}
    job_name=${job_name:-${SLURM_JOB_ID:-$$}}
    targets=${VALBENCH_METRICS_DIR:-${VALBENCH_OUT:-$(dirname "$out")}/metrics-targets}
    target_file=$targets/valbench-$job_name.json
    mkdir -p "$targets"
    run_dir=$(cd "$out" && pwd)
    printf '[{"targets": ["%s:%s"], "labels": {"run_dir": "%s", "slurm_job": "%s"}}]\n' \
        "$(hostname)" "$port" "$run_dir" "$job_name" >"$target_file.tmp"
    mv "$target_file.tmp" "$target_file" # atomic: Prometheus never reads half a file
    echo "valbench: metrics on http://$(hostname):$port/metrics"
fi

flag=$(mktemp "${TMPDIR:-/tmp}/valbench-term.XXXXXX")
(
    trap 'echo term >"$flag"; exit 0' TERM
    while :; do
        sleep 1 &
        wait $!
    done
) &
watcher=$!
child=
cleanup() {
    kill "$watcher" 2>/dev/null
    rm -f "$flag"
    [ -z "$target_file" ] || rm -f "$target_file"
}
trap cleanup EXIT
forward_term() {
    echo "valbench: SIGTERM: the evaluator finishes its in-flight calls, then stops"
    sleep 0.5 # let the watcher's trap run if the TERM went to the whole job
    if [ ! -s "$flag" ] && [ -n "$child" ]; then
        kill -TERM "$child" 2>/dev/null
    fi
}
trap forward_term TERM

"$VALBENCH_PYTHON" -m evaluator run --config "$config" --out "$out" --resume \
    --progress log "${metrics[@]}" "$@" "${extra[@]}" &
child=$!
# `wait` returns early when a trapped signal arrives: wait again until the
# evaluator has really exited.
while :; do
    wait "$child"
    rc=$?
    kill -0 "$child" 2>/dev/null || break
done
echo "valbench: evaluator exited with $rc"

if [ "$rc" -eq 75 ] && [ -n "${SLURM_JOB_ID:-}" ]; then
    # An array task is named ARRAYID_TASK: its SLURM_JOB_ID can equal the array's own
    # id, and requeueing that would requeue every task of the array.
    job=$SLURM_JOB_ID
    if [ -n "${SLURM_ARRAY_JOB_ID:-}" ] && [ -n "${SLURM_ARRAY_TASK_ID:-}" ]; then
        job=${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}
    fi
    restarts=${SLURM_RESTART_COUNT:-0}
    if [ "$restarts" -ge "${VALBENCH_MAX_REQUEUES:-20}" ]; then
        echo "valbench: not requeued: $restarts restarts already (VALBENCH_MAX_REQUEUES)" >&2
    elif scontrol requeue "$job"; then
        # Slurm now ends this instance and starts the job again later (same job id,
        # same log, SLURM_RESTART_COUNT + 1).
        echo "valbench: requeued job $job; the next start resumes $out"
    else
        echo "valbench: scontrol requeue failed; resubmit to resume $out" >&2
    fi
fi
exit "$rc"
