"""The runs a viewer shows: their labels, index threads, and what the run page says."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from evaluator.dataset import describe_source
from evaluator.view import pages, queries
from evaluator.view.checkpoint import ViewError
from evaluator.view.index import RunIndex

log = logging.getLogger("evaluator.view")


class RunView:
    """One run directory as the viewer shows it."""

    def __init__(self, i: int, index: RunIndex) -> None:
        self.i = i
        self.index = index
        self.run_dir = index.run_dir
        self.label = self.run_dir.name
        self._facets: tuple[int, dict[str, Any]] | None = None
        self._summary: tuple[float, dict[str, Any] | None] | None = None

    def facets(self) -> dict[str, Any]:
        """The filter form's choices and counts, recomputed only when the index changed."""
        version = self.index.version
        if self._facets is None or self._facets[0] != version:
            self._facets = (version, queries.facets(self.index.path))
        return self._facets[1]

    def summary(self) -> dict[str, Any] | None:
        path = self.run_dir / "summary.json"
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return None
        if self._summary is None or self._summary[0] != mtime:
            try:
                self._summary = (mtime, orjson.loads(path.read_bytes()))
            except (OSError, orjson.JSONDecodeError):  # being rewritten: the next look has it
                return None
        return self._summary[1]

    def plots(self) -> list[str]:
        folder = self.run_dir / "plots"
        return sorted(p.name for p in folder.glob("*.png")) if folder.is_dir() else []

    @property
    def state_text(self) -> str:
        ix = self.index
        if ix.error:
            return f"Cannot read this run right now: {ix.error}"
        if ix.state != "ready":
            return f"Indexing the run's pairs: {ix.indexed:,} so far…"
        statuses = self.facets()["statuses"]
        total = sum(statuses.values())
        parts = ", ".join(f"{n:,} {s}" for s, n in sorted(statuses.items()))
        pending = statuses.get("pending", 0)
        if not pending:
            return f"{total:,} pairs: {parts}. Every pair has an outcome."
        ago = f"{time.time() - ix.refreshed_at:.0f} s ago" if ix.refreshed_at else "not yet"
        return (
            f"{total:,} pairs: {parts}. The run is not finished: this page shows the "
            f"checkpoint as last read ({ago}); reload for newer outcomes."
        )

    def overview(self) -> dict[str, Any]:
        """run.html's context: facts, counts so far, headline metrics, failures, plots."""
        config = self.index.config
        summary = self.summary()
        facts = [("directory", str(self.run_dir.resolve()))]
        if config is not None:
            facts += [
                ("model", config.model if not config.judge_only else "(answers from the dataset)"),
                ("judge", f"{config.judge_model} ({config.judge_order} order)"),
                ("judge prompt", config.judge_prompt_source),
                ("dataset", describe_source(config.data)),
            ]
            if config.limit is not None:
                facts.append(("limit", f"the first {config.limit} valid pairs"))
        facets = self.facets() if self.index.state == "ready" else None
        context: dict[str, Any] = {
            "facts": facts,
            "statuses": sorted((facets or {}).get("statuses", {}).items()),
            "scores": sorted((facets or {}).get("scores", {}).items()),
            "summary": summary,
            "metrics": pages.metric_rows(summary) if summary else [],
            "plots": self.plots(),
            "has_report": (self.run_dir / "report.html").is_file(),
        }
        if summary is not None and summary.get("complete"):
            context["failures"] = summary.get("failures") or []
            context["failures_note"] = "Failed calls, from summary.json."
        else:
            context["failures"] = queries.failure_groups(self.index.path)
            context["failures_note"] = "Pairs with a failed call, from the checkpoint as now."
        return context


def _labels(runs: list[RunView]) -> None:
    """Each run's label: its directory's name and model (and judge where runs differ),
    with more of the path where two runs would still look alike."""
    configs = [r.index.config for r in runs]
    judges = {c.judge_model for c in configs if c is not None}
    for r, c in zip(runs, configs, strict=True):
        model = "dataset answers" if c is not None and c.judge_only else c.model if c else "?"
        r.label = f"{r.run_dir.name} · {model}"
        if len(judges) > 1 and c is not None:
            r.label += f" · judge {c.judge_model}"
    labels = [r.label for r in runs]
    for r in runs:
        if labels.count(r.label) > 1:
            r.label = f"{r.run_dir.resolve().parent.name}/{r.label}"
    for k, r in enumerate(runs):
        if [x.label for x in runs].count(r.label) > 1:
            r.label += f" #{k + 1}"


class Viewer:
    """The runs, each with a thread that builds its index and then keeps it current."""

    def __init__(self, indexes: list[RunIndex], refresh_s: float = 2.0) -> None:
        self.runs = [RunView(i, ix) for i, ix in enumerate(indexes)]
        self.refresh_s = refresh_s
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def check(self) -> None:
        """Each directory holds a run (ViewError naming the one that does not)."""
        seen: set[Path] = set()
        for run in self.runs:
            if not run.run_dir.is_dir():
                raise ViewError(f"{run.run_dir} is not a directory")
            where = run.run_dir.resolve()
            if where in seen:
                raise ViewError(f"{run.run_dir} is given twice")
            seen.add(where)
            run.index.config = run.index.read_config()
        _labels(self.runs)

    def start(self) -> None:
        for run in self.runs:
            t = threading.Thread(target=self._keep, args=(run,), name=f"view-index-{run.i}")
            t.start()
            self._threads.append(t)

    def _keep(self, run: RunView) -> None:
        ix = run.index
        while not self._stop.is_set():
            try:
                if ix.state == "ready":
                    ix.refresh(self._stop)
                else:
                    ix.build(self._stop)
                ix.error = None
            except Exception as exc:  # shown on the pages; tried again at the next look
                error = str(exc) or type(exc).__name__
                if error != ix.error:  # logged once, not at every look
                    log.warning("viewer: %s: %s", run.run_dir, error)
                ix.error = error
            self._stop.wait(self.refresh_s)

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()
        for run in self.runs:
            run.index.close()

    def busy(self) -> bool:
        """Whether a page may still change: an index being built, or pairs still pending."""
        for run in self.runs:
            if run.index.state != "ready" or run.index.error:
                return True
            if run.facets()["statuses"].get("pending"):
                return True
        return False

    def live_text(self) -> str:
        parts = []
        for run in self.runs:
            ix = run.index
            if ix.state != "ready":
                parts.append(f"{run.label}: indexing ({ix.indexed:,} pairs)")
            else:
                statuses = run.facets()["statuses"]
                pending = statuses.get("pending", 0)
                done = sum(statuses.values()) - pending
                parts.append(
                    f"{run.label}: {done:,}/{done + pending:,} pairs with an outcome"
                    + (" (run not finished)" if pending else "")
                )
        return " · ".join(parts)

    def simulated_text(self) -> str:
        names = [r.label for r in self.runs if r.index.config and r.index.config.simulated]
        return ", ".join(names)
