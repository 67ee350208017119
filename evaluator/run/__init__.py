"""Running an evaluation: one session (session), its two stages (stages), what is checked
before anything is sent (prepare), signals (signals), the outputs and the exit code at the
end (finish, exits), and between them the pipeline (scheduler) with what it keeps of calls
and pairs (outcomes, stored_calls) and asks of a stage (stage_client)."""

from evaluator.run.exits import (
    EXIT_BREAKER,
    EXIT_BUDGET,
    EXIT_FAILED_PAIRS,
    EXIT_FATAL_ENDPOINT,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PREFLIGHT,
    EXIT_RETRY_WAIT,
    EXIT_STORE,
    EXIT_USER,
    Exit,
    RunResult,
    UserError,
)
from evaluator.run.session import RunOptions, execute
from evaluator.run.signals import stop_on_signal

__all__ = [
    "EXIT_BREAKER",
    "EXIT_BUDGET",
    "EXIT_FAILED_PAIRS",
    "EXIT_FATAL_ENDPOINT",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_PREFLIGHT",
    "EXIT_RETRY_WAIT",
    "EXIT_STORE",
    "EXIT_USER",
    "Exit",
    "RunOptions",
    "RunResult",
    "UserError",
    "execute",
    "stop_on_signal",
]
