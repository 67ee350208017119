"""The circuit breaker: a stage whose calls keep failing stops the run instead of wasting it.

A misconfigured server fails every call the same way (a model it does not
serve, a revoked key it answers with 404, a window too small for max_tokens).
Recording those failures one pair at a time and finishing "successfully" turns
a typo into a night of nothing; the breaker stops the run at once, names the
cause with the server's own message, and leaves it resumable.

Two rules, each per stage (generation, judge), set by `--max-failures`:

    N     N calls in a row failed with the same error class (default 20).
          Calls fail in a row like that when something is wrong with the
          setup; a per-pair failure (one prompt too long) breaks the run at
          once. With independent failures of probability p the chance of 20
          in a row is p**20: negligible unless nearly every call fails.
    P%    more than P percent of the stage's last 200 calls failed (default
          10%). Failed pairs are left out of the metrics, so past a tenth of
          them the figures are no longer the benchmark's: better to stop and
          fix than to finish. The share is judged once 200 calls have ended.

A "failed call" is one that ended failed after the pool's retries, or a judge
answer that was still not a valid verdict after its re-asks. A provider's
content filter is an outcome, not a fault, and does not count.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

DEFAULT_MAX_FAILURES = "20,10%"
WINDOW = 200
NOT_COUNTED = frozenset({"content_filter"})

_RULE = re.compile(r"^(\d+)(%?)$")


class BreakerSettingError(ValueError):
    """`--max-failures` is not `N`, `P%`, both (`N,P%`) or `off`."""


@dataclass(frozen=True)
class BreakerRules:
    consecutive: int | None  # trip after this many same-class failures in a row
    share: float | None  # trip when more than this share of the last WINDOW calls failed

    @classmethod
    def parse(cls, text: str) -> BreakerRules:
        """`"20"`, `"10%"`, `"20,10%"`, or `"off"`/`"0"` (no breaker)."""
        text = str(text).strip().lower()
        if text in ("off", "0", "none", ""):
            return cls(None, None)
        consecutive = share = None
        for part in text.split(","):
            m = _RULE.match(part.strip())
            if m is None:
                raise BreakerSettingError(
                    f"--max-failures must be N (failures in a row), P% (share of the last "
                    f"{WINDOW} calls), both as N,P%, or off; got {text!r}"
                )
            value = int(m.group(1))
            if m.group(2):
                if not 0 < value < 100:
                    raise BreakerSettingError("--max-failures P% must be between 1% and 99%")
                share = value / 100.0
            else:
                if value < 1:
                    raise BreakerSettingError("--max-failures N must be at least 1")
                consecutive = value
        return cls(consecutive, share)


class CircuitOpen(Exception):
    """A stage's calls kept failing: the run stops (resumable) and says why."""

    def __init__(
        self,
        stage: str,
        rule: str,
        error_class: str,
        http_status: int | None,
        message: str,
        count: int,
    ) -> None:
        self.stage = stage
        self.rule = rule
        self.error_class = error_class
        self.http_status = http_status
        self.message = message
        self.count = count
        status = f" (HTTP {http_status})" if http_status else ""
        super().__init__(f"{rule}; the last was {error_class}{status}: {message}")


class _StageState:
    __slots__ = ("recent", "failed_recent", "run_class", "run_length")

    def __init__(self) -> None:
        self.recent: deque[bool] = deque(maxlen=WINDOW)
        self.failed_recent = 0
        self.run_class: str | None = None
        self.run_length = 0


class FailureBreaker:
    """Counts each stage's outcomes; `failure()` returns a CircuitOpen once a rule trips."""

    def __init__(self, rules: BreakerRules) -> None:
        self.rules = rules
        self._stages: dict[str, _StageState] = {}

    def _state(self, stage: str) -> _StageState:
        state = self._stages.get(stage)
        if state is None:
            state = self._stages[stage] = _StageState()
        return state

    def _push(self, state: _StageState, failed: bool) -> None:
        if len(state.recent) == WINDOW and state.recent[0]:
            state.failed_recent -= 1
        state.recent.append(failed)
        state.failed_recent += failed

    def success(self, stage: str) -> None:
        state = self._state(stage)
        self._push(state, False)
        state.run_class, state.run_length = None, 0

    def failure(
        self, stage: str, error_class: str, http_status: int | None, message: str
    ) -> CircuitOpen | None:
        if error_class in NOT_COUNTED:
            self.success(stage)
            return None
        state = self._state(stage)
        self._push(state, True)
        if state.run_class == error_class:
            state.run_length += 1
        else:
            state.run_class, state.run_length = error_class, 1
        rules = self.rules
        if rules.consecutive is not None and state.run_length >= rules.consecutive:
            rule = f"{state.run_length} {stage} calls in a row failed with {error_class}"
            return CircuitOpen(stage, rule, error_class, http_status, message, state.run_length)
        if (
            rules.share is not None
            and len(state.recent) == WINDOW
            and state.failed_recent > rules.share * WINDOW
        ):
            rule = (
                f"{state.failed_recent} of the last {WINDOW} {stage} calls failed "
                f"(more than {rules.share:.0%})"
            )
            return CircuitOpen(
                stage, rule, error_class, http_status, message, state.failed_recent
            )
        return None
