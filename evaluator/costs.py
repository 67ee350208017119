"""What a run costs: the price table, the cost of one call's usage, and the --max-cost guard.

Prices come from a TOML table (the bundled evaluator/data/prices.toml, or
`--prices FILE`), per model and in USD per million tokens; `--price-in` /
`--price-out` (and the judge's) override a stage's prices. A stage in batch
mode pays the batch rate (the table's `batch_discount`, 50% by default).

The budget guard reserves, before a call is sent, the most that call can
cost: its prompt estimated from the request size (one token per 3 bytes,
above the usual 4 for English, and all at the uncached price) plus its
`max_tokens` at the output price. A call whose reservation would take the
run's spend (earlier sessions included) plus every reservation in flight past
the budget is not sent: the run stops admitting work, drains, and exits with
EXIT_BUDGET, resumable with a larger `--max-cost`.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from evaluator.config import ConfigError, RunConfig
from evaluator.store import PROBE_ROLE_PREFIX
from workers.base import clean_usage

STAGES = ("gen", "judge")
BYTES_PER_TOKEN_WORST = 3.0
_SUFFIX = re.compile(r"^(?:-\d{4}-\d{2}-\d{2}|-\d{8}|-latest)$")
_FIELDS = {"input", "output", "cached_input", "cache_write", "batch_discount"}


@dataclass(frozen=True)
class Price:
    """USD per million tokens."""

    input: float
    output: float
    cached_input: float | None = None
    cache_write: float | None = None
    batch_discount: float = 0.5
    source: str = ""

    def for_mode(self, mode: str) -> Price:
        if mode != "batch":
            return self
        keep = 1.0 - self.batch_discount
        return replace(
            self,
            input=self.input * keep,
            output=self.output * keep,
            cached_input=None if self.cached_input is None else self.cached_input * keep,
            cache_write=None if self.cache_write is None else self.cache_write * keep,
            source=f"{self.source}, batch rate",
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "output": self.output,
            "cached_input": self.cached_input,
            "cache_write": self.cache_write,
            "source": self.source,
        }


@dataclass
class PriceTable:
    models: dict[str, Price]
    source: str
    taken: str | None = None

    def lookup(self, model: str) -> Price | None:
        if model in self.models:
            return self.models[model]
        for name in sorted(self.models, key=len, reverse=True):
            if model.startswith(name) and _SUFFIX.match(model[len(name) :]):
                return self.models[name]
        return None


def load_prices(path: str | Path | None = None) -> PriceTable:
    """The bundled table, or the TOML file at `path`; ConfigError names what is wrong."""
    if path is None:
        text = resources.files("evaluator").joinpath("data/prices.toml").read_text("utf-8")
        source = "bundled prices.toml"
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--prices: cannot read {path}: {exc}") from None
        source = str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--prices {source} is not valid TOML: {exc}") from None
    models = data.get("models")
    if not isinstance(models, dict):
        raise ConfigError(f'--prices {source}: needs [models."NAME"] tables')
    table: dict[str, Price] = {}
    for name, entry in models.items():
        where = f"--prices {source}: model {name!r}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a table")
        unknown = set(entry) - _FIELDS
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        for key, value in entry.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigError(f"{where}: {key} must be a number >= 0")
        if "input" not in entry or "output" not in entry:
            raise ConfigError(f"{where}: input and output prices are required")
        if not 0 <= entry.get("batch_discount", 0.5) < 1:
            raise ConfigError(f"{where}: batch_discount must be in [0, 1)")
        table[name] = Price(
            input=float(entry["input"]),
            output=float(entry["output"]),
            cached_input=_opt(entry.get("cached_input")),
            cache_write=_opt(entry.get("cache_write")),
            batch_discount=float(entry.get("batch_discount", 0.5)),
            source=f"{source} ({name}, taken {data.get('taken', 'undated')})",
        )
    taken = data.get("taken")
    return PriceTable(table, source, str(taken) if taken is not None else None)


def _opt(value: Any) -> float | None:
    return None if value is None else float(value)


def stage_prices(config: RunConfig) -> dict[str, Price | None]:
    """Each stage's price for its model and mode; None where nothing is known."""
    table = load_prices(config.prices)
    out: dict[str, Price | None] = {}
    for stage, model, p_in, p_out, mode in (
        ("gen", config.model, config.price_in, config.price_out, getattr(config, "mode", "online")),
        (
            "judge",
            config.judge_model,
            config.judge_price_in,
            config.judge_price_out,
            getattr(config, "judge_mode", "online"),
        ),
    ):
        price = table.lookup(model)
        if p_in is not None or p_out is not None:
            flags = "--judge-price-in/out" if stage == "judge" else "--price-in/out"
            base = price or Price(0.0, 0.0)
            price = replace(
                base,
                input=base.input if p_in is None else float(p_in),
                output=base.output if p_out is None else float(p_out),
                # A flag price replaces the table's cache rates too: they belonged to another price.
                cached_input=None if p_in is not None else base.cached_input,
                cache_write=None if p_in is not None else base.cache_write,
                source=flags,
            )
        out[stage] = price.for_mode(mode) if price is not None else None
    return out


def usage_tokens(usage: dict[str, Any]) -> tuple[int, int, int, int]:
    """(uncached input, cache reads, cache writes, output) from any provider's usage.

    Chat completions: prompt_tokens (cached ones in prompt_tokens_details.cached_tokens);
    Responses: input_tokens (input_tokens_details.cached_tokens); Messages: input_tokens,
    cache_read_input_tokens and cache_creation_input_tokens, which are apart.
    """

    def num(value: Any) -> int:
        ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
        return value if ok else 0

    out = num(usage.get("completion_tokens")) or num(usage.get("output_tokens"))
    if "cache_read_input_tokens" in usage or "cache_creation_input_tokens" in usage:
        return (
            num(usage.get("input_tokens")),
            num(usage.get("cache_read_input_tokens")),
            num(usage.get("cache_creation_input_tokens")),
            out,
        )
    prompt = num(usage.get("prompt_tokens")) or num(usage.get("input_tokens"))
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
    cached = num(details.get("cached_tokens")) if isinstance(details, dict) else 0
    cached = min(cached, prompt)
    return prompt - cached, cached, 0, out


def usage_cost(usage: dict[str, Any], price: Price | None) -> float:
    if price is None or not usage:
        return 0.0
    fresh, read, write, out = usage_tokens(usage)
    cached_rate = price.input if price.cached_input is None else price.cached_input
    write_rate = price.input if price.cache_write is None else price.cache_write
    return (
        fresh * price.input + read * cached_rate + write * write_rate + out * price.output
    ) / 1e6


@dataclass
class StageCost:
    calls: int = 0  # calls with a recorded usage
    tokens_in: int = 0
    tokens_out: int = 0
    usd: float = 0.0
    probes: int = 0  # the preflight's test calls: in the tokens and cost, not in `calls`

    def add(self, usage: dict[str, Any], price: Price | None, probe: bool = False) -> float:
        # Checked again here for checkpoints written before the workers checked it.
        usage = clean_usage(usage)
        fresh, read, write, out = usage_tokens(usage)
        cost = usage_cost(usage, price)
        if probe:
            self.probes += 1
        else:
            self.calls += 1
        self.tokens_in += fresh + read + write
        self.tokens_out += out
        self.usd += cost
        return cost

    def to_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "preflight_calls": self.probes,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "usd": round(self.usd, 6),
        }


@dataclass
class CostMeter:
    """The run's spend per stage (earlier sessions included), reservations, and the budget."""

    prices: dict[str, Price | None]
    limit: float | None = None
    stages: dict[str, StageCost] = field(default_factory=lambda: {s: StageCost() for s in STAGES})
    reserved: float = 0.0
    in_flight: int = 0
    exhausted: bool = False  # a call was refused: the budget would have been exceeded

    @classmethod
    def for_run(cls, config: RunConfig, usages: Any = ()) -> CostMeter:
        """`usages`: (role, usage) of calls already recorded (earlier sessions).

        Raises ConfigError for an unreadable price table, or for --max-cost when a
        stage's price is unknown (a budget cannot be kept without prices).
        """
        prices = stage_prices(config)
        if config.max_cost is not None:
            missing = [
                f"{'judge' if s == 'judge' else 'model'} {m!r}"
                for s, m in (("gen", config.model), ("judge", config.judge_model))
                if prices[s] is None
            ]
            if missing:
                raise ConfigError(
                    f"--max-cost needs prices for {' and '.join(missing)}: add them to a "
                    "--prices file or give --price-in/--price-out "
                    "(--judge-price-in/--judge-price-out)"
                )
        meter = cls(prices, config.max_cost)
        for role, usage in usages:
            probe = role.startswith(PROBE_ROLE_PREFIX)  # a preflight test call (see the store)
            stage = "judge" if role.removeprefix(PROBE_ROLE_PREFIX).startswith("judge") else "gen"
            if usage:
                meter.stages[stage].add(usage, prices[stage], probe=probe)
        return meter

    @property
    def spent(self) -> float:
        return sum(s.usd for s in self.stages.values())

    def worst_case(self, stage: str, body_bytes: int, max_tokens: int) -> float:
        price = self.prices.get(stage)
        if price is None:
            return 0.0
        prompt = body_bytes / BYTES_PER_TOKEN_WORST
        rates = [price.input, price.cache_write or 0.0]
        return (prompt * max(rates) + max_tokens * price.output) / 1e6

    def reserve(self, stage: str, body_bytes: int, max_tokens: int) -> float | None:
        """The reservation for one call, or None when it could take the run past the budget."""
        worst = self.worst_case(stage, body_bytes, max_tokens)
        if self.limit is not None and self.spent + self.reserved + worst > self.limit:
            self.exhausted = True
            return None
        self.reserved += worst
        self.in_flight += 1
        return worst

    def settle(self, stage: str, reservation: float, usage: dict[str, Any] | None) -> float:
        """A reserved call ended; its real cost (0 without usage) replaces the reservation."""
        self.reserved = max(0.0, self.reserved - reservation)
        self.in_flight -= 1
        if not usage:
            return 0.0
        return self.stages[stage].add(usage, self.prices.get(stage))

    def projected(self, expected_calls: dict[str, int | None]) -> float | None:
        """Spend so far plus each stage's average cost per call times its calls still to come."""
        total = 0.0
        for stage, cost in self.stages.items():
            expected = expected_calls.get(stage)
            if expected is None:
                return None
            left = max(0, expected - cost.calls)
            if left and cost.calls == 0:
                return None  # nothing to average yet
            total += cost.usd + (cost.usd / cost.calls * left if left else 0.0)
        return total

    def summary(self, expected_calls: dict[str, int | None] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            stage: {**cost.to_dict(), "price": _price_dict(self.prices.get(stage))}
            for stage, cost in self.stages.items()
        }
        out["total_usd"] = round(self.spent, 6)
        out["max_cost_usd"] = self.limit
        if expected_calls is not None:
            projected = self.projected(expected_calls)
            out["projected_total_usd"] = None if projected is None else round(projected, 6)
        return out


def _price_dict(price: Price | None) -> dict[str, Any] | None:
    return None if price is None else price.to_dict()


def expected_calls(expected_pairs: int | None, judge_orders: int) -> dict[str, int | None]:
    if expected_pairs is None:
        return {"gen": None, "judge": None}
    return {"gen": 2 * expected_pairs, "judge": judge_orders * expected_pairs}
