"""How an endpoint's in-flight limit follows its vLLM server's load: the policy alone.

A continuous-batching server (vLLM) runs as many sequences at once as its batch
and KV cache hold; what it cannot run yet waits in its queue. Too few requests
in flight and the GPU idles; far too many and requests wait in that queue until
they time out. From one reading of the server's `/metrics` (workers.vllm_metrics),
`decide` sets the endpoint's limit:

- **raise** while the server has room (no queue beyond the calls that arrived
  during the current engine step, KV cache not full) and this endpoint uses
  the limit it has: doubling until the server first keeps a long queue, then by
  a tenth, or at once by the room the server has shown it has;
- **hold** while a short queue (up to `queue_share` of the running batch, at
  least `min_queue`) keeps a full batch full as sequences finish;
- **lower** when the queue stays longer than that: by this endpoint's share of
  the server's requests times the excess, computed from what is in flight now,
  so a cut that is still draining is not cut again. Two stages on one server
  are each cut by their own share. And when answers (or timeouts) take more
  than `latency_high` of the request timeout: by 30%, at most once per such
  latency (no raise while they take more than `latency_raise` of it).

A reading is trusted only when the one before agrees (room, or a long queue):
requests join the batch at the start of an engine step, so calls that have just
arrived show as a queue for a moment on any server.

The poller that takes the readings and applies these decisions is
workers.server_aware. Everything here is pure: time and the server come in as
arguments, so it is tested without waiting.
"""

from __future__ import annotations

from dataclasses import dataclass

from workers.vllm_metrics import ServerLoad

__all__ = ["FollowSettings", "batch_full", "decide", "long_queue"]


@dataclass
class FollowSettings:
    """How an endpoint pool follows its servers (workers.pool takes it as `follow`)."""

    ceiling: int = 1024  # calls in flight per endpoint at most
    start: int = 64  # the limit once the server is found to publish its load
    fallback: int = 64  # the fixed cap (with AIMD) of an endpoint without metrics
    minimum: int = 4
    interval_s: float = 0.5  # between readings of /metrics
    min_queue: float = 4.0  # a queue this long is always fine ...
    queue_share: float = 0.1  # ... and so is one up to this share of the running batch
    kv_high: float = 0.95  # KV-cache usage from which the batch counts as full
    # Answers (or timeouts) taking this share of the request timeout: lower. Raise only
    # while the slowest answer takes less than `latency_raise` of it. Not less: a long
    # answer is long at any batch size; only nearing the timeout is a reason to cut.
    latency_high: float = 0.75
    latency_raise: float = 0.5
    vanish_after: int = 3  # answered readings without vLLM metrics before falling back
    unreachable_s: float = 30.0  # /metrics unreachable this long while calls succeed: fall back
    managed: bool = False  # servers the evaluator started: they must publish metrics


def long_queue(s: FollowSettings, load: ServerLoad) -> bool:
    """More waiting than a batch this size needs to stay full (`queue_share` of it)."""
    return load.waiting > max(s.min_queue, s.queue_share * load.running)


def batch_full(s: FollowSettings, load: ServerLoad, capacity: float) -> bool:
    """The server runs all it can: its KV cache is (nearly) full, or it runs as many as
    when it last showed it was full. Before that is known, it counts as having room."""
    if load.kv_usage is not None and load.kv_usage >= s.kv_high:
        return True
    return capacity > 0 and load.running >= 0.95 * capacity


def decide(
    s: FollowSettings,
    load: ServerLoad,
    *,
    limit: float,
    inflight: int,
    saturated: bool,
    latency_s: float | None,
    timeout_s: float,
    probing: bool,
    capacity: float = 0.0,
    room_before: bool = True,
    queue_before: bool = True,
    latency_cut_ok: bool = True,
) -> tuple[float, str]:
    """The next limit and why ("raise", "hold ...", "lower ...", "idle"), from one reading.

    `saturated`: this endpoint has calls waiting for a slot, or uses nearly all of its
    limit. `capacity`: what the server ran the last time it was full and had calls
    waiting (a long queue, or its KV cache full; 0 if not seen yet). `room_before`, `queue_before`: the previous
    reading showed room, or a long queue, too (see the module docstring).
    Pure: time and the server come in as arguments, so it is tested without waiting.
    """
    running, waiting = load.running, load.waiting
    fine_queue = max(s.min_queue, s.queue_share * running)
    if latency_s is not None and latency_s > s.latency_high * timeout_s:
        if not latency_cut_ok:
            return limit, "hold (latency: waiting for the last cut to show)"
        return max(s.minimum, min(limit, inflight * 0.7)), "lower (latency)"
    if long_queue(s, load):
        if not queue_before:
            return limit, "hold (queue seen once)"
        share = min(1.0, inflight / max(running + waiting, 1.0))  # this endpoint's part
        # From what is in flight now (not the limit): a cut still draining is not cut
        # again, and an endpoint using less than its limit comes down to what it uses.
        target = max(float(s.minimum), inflight - (waiting - fine_queue / 2) * share)
        if target >= limit:
            return limit, "hold (the last cut is draining)"
        return target, "lower (queue)"
    full = batch_full(s, load, capacity)
    if full and (waiting > 0 or (load.kv_usage or 0.0) >= s.kv_high):
        return limit, "hold"  # a short queue keeps the full batch full
    if not saturated:
        return limit, "idle"
    if latency_s is not None and latency_s > s.latency_raise * timeout_s:
        return limit, "hold (latency)"
    if probing:
        step = limit  # double until the server first keeps a long queue
    elif not room_before:
        return limit, "hold (room seen once)"
    else:  # a tenth, or at once the room the server has shown it has
        step = max(1.0, limit * 0.1, capacity - running)
    return min(float(s.ceiling), limit + step), "raise"
