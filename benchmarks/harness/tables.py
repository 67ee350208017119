"""Turning measured runs into the report: medians, number formats, Markdown tables, sections."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable


def med(values: Iterable[float | None]) -> float:
    """Median of the values given (None left out); NaN when there are none."""
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else float("nan")


def fmt_row(cells: list[object]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def table(header: list[str], align: list[str], rows: list[list[object]]) -> list[str]:
    """A markdown table; columns beyond `align` are right-aligned (numbers)."""
    align = (list(align) + ["---:"] * len(header))[: len(header)]
    return [fmt_row(header), fmt_row(align), *(fmt_row(r) for r in rows)]


def f0(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.0f}"


def f1(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1f}"


def f2(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def f3(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def lag_cell(runs: list[dict]) -> str:
    """'p99 / max' event-loop lag of runs (medians), or n/a for clients without a loop."""
    p99 = [r.get("lag_p99_ms") for r in runs]
    if all(v is None for v in p99):
        return "n/a (threads)"
    return f"{f1(med(p99))} / {f1(med(r.get('lag_max_ms') for r in runs))}"


def describe(who: str, m: dict) -> str:
    """One run in one progress line."""
    calls = 3 * m["n"]
    s = f"{who}: {m['wall_s']:.2f} s, {calls / m['wall_s']:.0f} calls/s"
    if m.get("session_wall_s"):
        s += f" ({calls / m['session_wall_s']:.0f} in session)"
    s += f", CPU {1000 * m['cpu_s'] / calls:.3f} ms/call, {m['rss_mib']:.0f} MiB"
    if m.get("lag_p99_ms") is not None:
        s += f", lag p99 {m['lag_p99_ms']:.1f} ms"
    return s


class Section:
    """One scenario's part of the report: a title, lines of Markdown, and its targets."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.lines: list[str] = []
        self.targets: list[tuple[str, str, str]] = []  # (target, measured, verdict)

    def target(self, what: str, measured: str, ok: bool | None) -> None:
        verdict = "n/a" if ok is None else ("met" if ok else "**MISSED**")
        self.targets.append((what, measured, verdict))

    def render(self) -> str:
        return "\n".join([f"### {self.title}", "", *self.lines]) + "\n"


def rotate(seq: tuple[str, ...], i: int) -> tuple[str, ...]:
    """seq rotated by i: the order of repeat i, so slow drift hits every client alike."""
    k = i % len(seq)
    return seq[k:] + seq[:k]
