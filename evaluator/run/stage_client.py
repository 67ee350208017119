"""What the scheduler asks of a stage (ChatClient), the stage of a judge-only run that never
sends (NoGeneration), and the refusal of a call that could pass --max-cost (BudgetExhausted)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from workers.base import CallFailure, Completion


class ChatClient(Protocol):
    """What the scheduler needs of a stage: workers.pool.EndpointPool (online) or
    evaluator.batch.stage.BatchStage (batch mode, which uses `key` as the call's identity
    at the provider; the online pool ignores it). A client with `batched = True` sends in
    provider batches and records no intent per call."""

    @property
    def capacity(self) -> int: ...

    async def chat(
        self,
        body: bytes,
        max_tokens: int = 0,
        before_send: Callable[[], Awaitable[None]] | None = None,
        key: str | None = None,
    ) -> Completion | CallFailure: ...


class NoGeneration:
    """The generation stage of a judge-only run: the answers come from the dataset, so it has
    no workers, no endpoints and never sends a call."""

    capacity = 0
    endpoints: tuple = ()
    observer = None

    async def __aenter__(self) -> NoGeneration:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def check(self) -> None:
        return None

    async def chat(self, body: bytes, *args: object, **kwargs: object) -> Completion:
        raise RuntimeError("a judge-only run sends no generation call")


class BudgetExhausted(Exception):
    """The next call could take the run past --max-cost: it is not sent."""
