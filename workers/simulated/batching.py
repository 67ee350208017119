"""A SIMULATED GPU that batches like vLLM: continuous batching, a KV-cache budget, a queue.

No model runs here; the engine only decides *when* each answer is released, the
way a continuous-batching server would. It advances in engine steps. In each
step every running sequence that has finished its prompt emits one token, and
the rest of the step's token budget (`max_num_batched_tokens`) prefills prompts,
oldest first (chunked prefill). A step costs

    step_ms + seq_ms x sequences in the step + prefill_token_ms x prompt tokens computed
            + kv_ktoken_ms x thousands of tokens held in the KV cache

so throughput grows with the batch until the per-sequence and KV costs dominate
(a memory-bound decode turning compute-bound). A waiting request is admitted
(first come, first served) while fewer than `max_num_seqs` run and the KV cache
has room for it; the rest wait in the queue.

Simplifications, each a choice for a predictable test bed rather than fidelity:
admission reserves a sequence's whole length (prompt plus the tokens it will
generate), so the simulator never preempts; vLLM allocates blocks as tokens are
generated and preempts under pressure. KV usage is reported from those
reservations. A request's prefix is its system message: with prefix caching,
a prefix already in the cache is not prefilled again and its tokens are held
once however many running sequences share it; a cached prefix no running
sequence uses stays until its room is needed (least recently used first), as
vLLM keeps freed blocks in its prefix cache until they are reallocated.

`/metrics` (`MetricsCollector`, gpu_metrics.py) publishes the engine's state under
vLLM's own metric names and types.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import random
import time
from collections import OrderedDict, deque
from dataclasses import dataclass


@dataclass
class BatchingConfig:
    """The simulated GPU's capacity and costs (flags of `python -m workers.simulated`)."""

    max_num_seqs: int = 256  # vLLM --max-num-seqs: sequences in one batch at most
    kv_cache_tokens: int = 500_000  # KV-cache budget in tokens (vLLM: GPU blocks x block size)
    max_num_batched_tokens: int = 8192  # vLLM --max-num-batched-tokens: tokens in one step
    step_ms: float = 10.0  # fixed cost of a step (reading the weights once)
    seq_ms: float = 0.05  # per sequence in the step
    prefill_token_ms: float = 0.01  # per prompt token computed (not served from the cache)
    kv_ktoken_ms: float = 0.0  # per thousand tokens held in the KV cache (attention reads)
    prefix_caching: bool = True  # vLLM --enable-prefix-caching (on by default in V1)
    output_tokens: int | None = None  # tokens a model answer decodes (None: its text's length)
    judge_output_tokens: int | None = None  # the same for a verdict
    # Spread of those lengths: each request draws its own from a lognormal around them
    # (sigma 0: all alike). Real answers vary, so sequences leave the batch one by one
    # rather than in waves.
    output_sigma: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1 or self.kv_cache_tokens < 1 or self.max_num_batched_tokens < 1:
            raise ValueError(
                "max_num_seqs, kv_cache_tokens and max_num_batched_tokens must be >= 1"
            )
        if min(self.step_ms, self.seq_ms, self.prefill_token_ms, self.kv_ktoken_ms) < 0:
            raise ValueError("step costs must be >= 0")
        if self.output_sigma < 0:
            raise ValueError("output_sigma must be >= 0")


class _Seq:
    __slots__ = (
        "prompt",
        "output",
        "prefix",
        "prefix_tokens",
        "shared",
        "own",
        "prefill_left",
        "finish_step",
        "future",
        "state",
    )

    def __init__(self, prompt: int, output: int, prefix: str | None, prefix_tokens: int) -> None:
        self.prompt = prompt
        self.output = output
        self.prefix = prefix
        self.prefix_tokens = min(prefix_tokens, prompt)
        self.shared = False  # its prefix is held once for every sequence using it
        self.own = 0  # KV tokens reserved for this sequence alone
        self.prefill_left = 0
        self.finish_step = 0
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.state = "waiting"  # -> "prefill" -> "decode" -> "done" (or "aborted")


class BatchingEngine:
    """One simulated GPU's scheduler loop, on the server's event loop.

    `start()` creates the loop task and `stop()` cancels and awaits it; `run()`
    blocks until the request's last token, and a cancelled `run()` aborts the
    request (vLLM aborts a request whose client went away).
    """

    def __init__(self, config: BatchingConfig) -> None:
        self.config = config
        self._rng = random.Random(config.seed)
        self.waiting: deque[_Seq] = deque()
        self.prefilling: deque[_Seq] = deque()
        self.decoding: list[tuple[int, int, _Seq]] = []  # heap by finish step
        self.running = 0  # sequences admitted and not finished (prefilling + decoding)
        self.decode_count = 0
        self.reserved = 0  # KV tokens held: running sequences' own plus prefixes in use
        # prefix -> [tokens, running sequences using it]; least recently used first
        self.prefixes: OrderedDict[str, list[int]] = OrderedDict()
        self.idle_prefix_tokens = 0  # cached prefixes no running sequence uses (evictable)
        self.step = 0
        self._ids = itertools.count()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Counters, as vLLM's: tokens, prefix-cache queries and hits (in tokens), requests.
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.prefix_queries_total = 0
        self.prefix_hits_total = 0
        self.prefix_offered_total = 0  # tokens of shared prefixes asked for (/sim/stats only)
        self.requests_total = 0
        self.busy_s = 0.0  # time spent in steps (for a utilisation figure)
        self.sequence_s = 0.0  # sequences x step time: / busy_s = the mean batch
        self.peak_running = 0

    # -- lifetime --------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="simulated-gpu")

    async def stop(self) -> None:
        """Cancel the loop and await it; requests still queued or running are cancelled
        (their handlers end at once instead of holding the server's shutdown)."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        pending = [*self.waiting, *self.prefilling, *(seq for _, _, seq in self.decoding)]
        for seq in pending:
            if not seq.future.done():
                seq.future.cancel()

    # -- requests --------------------------------------------------------------
    def output_tokens(self, judge: bool, text_tokens: int, max_tokens: int) -> int:
        """How many tokens a request decodes: the configured length or its text's, within max_tokens."""
        wanted = self.config.judge_output_tokens if judge else self.config.output_tokens
        n = wanted if wanted is not None else text_tokens
        if self.config.output_sigma > 0:  # mean kept at n: exp(N(-s^2/2, s))
            sigma = self.config.output_sigma
            n = round(n * math.exp(self._rng.gauss(-sigma * sigma / 2, sigma)))
        if max_tokens > 0:
            n = min(n, max_tokens)
        return max(1, n)

    async def run(
        self, prompt_tokens: int, output_tokens: int, prefix: str | None, prefix_tokens: int
    ) -> None:
        """Queue one request and wait until its last token has been generated."""
        seq = _Seq(max(1, prompt_tokens), max(1, output_tokens), prefix, prefix_tokens)
        self.waiting.append(seq)
        self._wake.set()
        try:
            await seq.future
        except asyncio.CancelledError:
            self._abort(seq)
            raise

    def _abort(self, seq: _Seq) -> None:
        if seq.state == "waiting":
            try:
                self.waiting.remove(seq)
            except ValueError:
                pass
        elif seq.state in ("prefill", "decode"):
            self._release(seq)
        seq.state = "aborted"

    # -- figures ---------------------------------------------------------------
    @property
    def kv_usage(self) -> float:
        """Share of the KV cache held by running sequences (0..1), as vLLM's gauge."""
        return min(1.0, self.reserved / self.config.kv_cache_tokens)

    def stats(self) -> dict:
        return {
            "running": self.running,
            "waiting": len(self.waiting),
            "peak_running": self.peak_running,
            "kv_cache_usage": round(self.kv_usage, 4),
            "steps": self.step,
            "busy_s": round(self.busy_s, 3),
            "mean_batch": round(self.sequence_s / self.busy_s, 1) if self.busy_s else 0.0,
            "requests": self.requests_total,
            "prompt_tokens": self.prompt_tokens_total,
            "generation_tokens": self.generation_tokens_total,
            "prefix_cache_queries": self.prefix_queries_total,
            "prefix_cache_hits": self.prefix_hits_total,
            "shared_prefix_tokens": self.prefix_offered_total,
        }

    # -- the scheduler ---------------------------------------------------------
    def _admit(self) -> None:
        c = self.config
        while self.waiting and self.running < c.max_num_seqs:
            seq = self.waiting[0]
            cached = 0
            prefix_new = 0  # prefix tokens that start being held now
            entry = None
            shared = c.prefix_caching and seq.prefix is not None and seq.prefix_tokens > 0
            if shared:
                entry = self.prefixes.get(seq.prefix)
                if entry is not None:
                    cached = entry[0]
                    if entry[1] == 0:
                        prefix_new = entry[0]
                else:
                    prefix_new = seq.prefix_tokens
            own = seq.prompt - (seq.prefix_tokens if shared else 0) + seq.output
            need = own + prefix_new
            # An idle cached prefix becoming used moves out of the evictable pool.
            evictable = self.idle_prefix_tokens - (prefix_new if entry is not None else 0)
            free = c.kv_cache_tokens - self.reserved - evictable
            if need > free:
                free += self._evict(need - free, keep=seq.prefix if entry is not None else None)
            if need > free and self.running > 0:
                return  # first come, first served: the head of the queue waits for room
            self.waiting.popleft()
            if shared:
                if entry is None:
                    entry = self.prefixes[seq.prefix] = [seq.prefix_tokens, 0]
                elif entry[1] == 0:
                    self.idle_prefix_tokens -= entry[0]
                entry[1] += 1
                self.prefixes.move_to_end(seq.prefix)
            seq.shared = shared
            seq.own = own
            self.reserved += need
            self.prefix_queries_total += seq.prompt
            self.prefix_hits_total += cached
            self.prefix_offered_total += seq.prefix_tokens if shared else 0
            seq.prefill_left = seq.prompt - cached
            seq.state = "prefill"
            self.prefilling.append(seq)
            self.running += 1
            self.peak_running = max(self.peak_running, self.running)

    def _evict(self, wanted: int, keep: str | None) -> int:
        """Drop idle cached prefixes, least recently used first; returns the tokens freed."""
        freed = 0
        for key in list(self.prefixes):
            if freed >= wanted:
                break
            tokens, users = self.prefixes[key]
            if users == 0 and key != keep:
                del self.prefixes[key]
                self.idle_prefix_tokens -= tokens
                freed += tokens
        return freed

    def _release(self, seq: _Seq) -> None:
        """A sequence leaves the batch: its KV reservation and its hold on a prefix end."""
        self.running -= 1
        if seq.state == "decode":
            self.decode_count -= 1
        self.reserved -= seq.own
        if seq.shared:
            entry = self.prefixes.get(seq.prefix)
            if entry is not None:
                entry[1] -= 1
                if entry[1] == 0:
                    self.reserved -= entry[0]
                    self.idle_prefix_tokens += entry[0]

    async def _loop(self) -> None:
        c = self.config
        clock = time.monotonic()
        while True:
            self._admit()
            if self.running == 0:
                self._wake.clear()
                await self._wake.wait()
                clock = time.monotonic()
                continue
            decoding = self.decode_count
            budget = max(0, c.max_num_batched_tokens - decoding)
            prefilled = 0
            in_step = decoding
            first_tokens: list[_Seq] = []
            while self.prefilling and budget > 0:
                seq = self.prefilling[0]
                if seq.state != "prefill":  # aborted
                    self.prefilling.popleft()
                    continue
                take = min(seq.prefill_left, budget)
                seq.prefill_left -= take
                budget -= take
                prefilled += take
                in_step += 1
                if seq.prefill_left:
                    break  # the rest of its prompt goes in the next step (chunked prefill)
                self.prefilling.popleft()
                first_tokens.append(seq)
            step_s = (
                c.step_ms
                + c.seq_ms * in_step
                + c.prefill_token_ms * prefilled
                + c.kv_ktoken_ms * self.reserved / 1000.0
            ) / 1000.0
            clock += step_s
            delay = clock - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                clock = time.monotonic()  # behind (a busy CPU): do not try to catch up
                await asyncio.sleep(0)
            self.busy_s += step_s
            self.sequence_s += step_s * in_step
            # The step's tokens: one per decoding sequence, the first one of each prompt done.
            self.generation_tokens_total += decoding + len(first_tokens)
            for seq in first_tokens:
                if seq.state != "prefill":
                    continue
                self.prompt_tokens_total += seq.prompt
                seq.state = "decode"
                self.decode_count += 1
                seq.finish_step = self.step + seq.output - 1
                heapq.heappush(self.decoding, (seq.finish_step, next(self._ids), seq))
            while self.decoding and self.decoding[0][0] <= self.step:
                _, _, seq = heapq.heappop(self.decoding)
                if seq.state != "decode":
                    continue  # aborted while running
                self._release(seq)
                seq.state = "done"
                self.requests_total += 1
                if not seq.future.done():
                    seq.future.set_result(None)
            self.step += 1
