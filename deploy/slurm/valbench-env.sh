# Sourced by the job scripts: which Python runs the evaluator, and from where.
#   VALBENCH_PYTHON  interpreter with the evaluator installed (default: python3)
#   VALBENCH_HOME    the evaluator's source checkout (default: the directory the job
#                    was submitted from); when it holds the sources they are put
#                    first on PYTHONPATH, so a checkout works without `pip install`.
VALBENCH_PYTHON=${VALBENCH_PYTHON:-python3}
VALBENCH_HOME=${VALBENCH_HOME:-${SLURM_SUBMIT_DIR:-$PWD}}
if [ -f "$VALBENCH_HOME/evaluator/__main__.py" ]; then
    export PYTHONPATH="$VALBENCH_HOME${PYTHONPATH:+:$PYTHONPATH}"
fi
