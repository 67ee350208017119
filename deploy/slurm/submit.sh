#!/usr/bin/env bash
# Submit a sharded run: a job array (one task per shard) and the merge, which
# Slurm starts once every task has succeeded (--dependency=afterok).
#
#   deploy/slurm/submit.sh --config run.toml --out runs/big --shards 8 \
#       [--max-parallel 4] [--partition gpu] [-- more sbatch flags for the shards]
#
# e.g. `-- --gres=gpu:8 --time=08:00:00`. Prints `array=<job id>` and
# `merge=<job id>`. Logs go to OUT/logs/. The evaluator's Python and sources come
# from VALBENCH_PYTHON / VALBENCH_HOME (see valbench-env.sh); VALBENCH_HOME
# defaults to the checkout this script is in.
set -euo pipefail

usage() {
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

config= out= shards= max_parallel= partition=
while [ $# -gt 0 ]; do
    case $1 in
        --config) config=${2:?--config needs a file}; shift 2 ;;
        --out) out=${2:?--out needs a folder}; shift 2 ;;
        --shards) shards=${2:?--shards needs a number}; shift 2 ;;
        --max-parallel) max_parallel=${2:?--max-parallel needs a number}; shift 2 ;;
        --partition) partition=${2:?--partition needs a name}; shift 2 ;;
        --) shift; break ;;
        -h | --help) usage ;;
        *) echo "submit.sh: unknown option $1" >&2; usage ;;
    esac
done
[ -n "$config" ] && [ -n "$out" ] && [ -n "$shards" ] || usage
if ! [[ $shards =~ ^[1-9][0-9]*$ ]]; then
    echo "submit.sh: --shards must be a positive whole number, got $shards" >&2
    exit 2
fi
if [ -n "$max_parallel" ] && ! [[ $max_parallel =~ ^[1-9][0-9]*$ ]]; then
    echo "submit.sh: --max-parallel must be a positive whole number, got $max_parallel" >&2
    exit 2
fi
if [ ! -f "$config" ]; then
    echo "submit.sh: config file $config does not exist" >&2
    exit 2
fi

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export VALBENCH_HOME=${VALBENCH_HOME:-$(cd "$here/../.." && pwd)}
export VALBENCH_CONFIG=$(realpath "$config")
mkdir -p "$out/logs"
export VALBENCH_OUT=$(realpath "$out")
export VALBENCH_SHARDS=$shards

common=(--parsable)
[ -n "$partition" ] && common+=(--partition "$partition")
array="0-$((shards - 1))${max_parallel:+%$max_parallel}"

array_id=$(sbatch "${common[@]}" --array="$array" \
    --output="$VALBENCH_OUT/logs/shard-%a.out" "$@" "$here/shard-array.sbatch")
array_id=${array_id%%;*} # --parsable prints "id[;cluster]"
merge_id=$(sbatch "${common[@]}" --dependency="afterok:$array_id" \
    --output="$VALBENCH_OUT/logs/merge.out" "$here/merge.sbatch")
merge_id=${merge_id%%;*}
echo "array=$array_id"
echo "merge=$merge_id"
