"""Failed calls grouped by how they failed, for the run's summary and `status`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_NUMBERS = re.compile(r"\d+")


@dataclass(slots=True)
class FailureGroup:
    """Failed calls that failed the same way: the first message is kept as the example."""

    stage: str  # "generation" | "judge"
    error_class: str
    http_status: int | None
    message: str
    count: int
    example_pair_id: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "class": self.error_class,
            "stage": self.stage,
            "http_status": self.http_status,
            "message": self.message,
            "count": self.count,
            "example_pair_id": self.example_pair_id,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FailureGroup:
        return cls(
            d["stage"], d["class"], d["http_status"], d["message"], d["count"], d["example_pair_id"]
        )

    def line(self) -> str:
        status = f" (HTTP {self.http_status})" if self.http_status else ""
        return (
            f"{self.count} x {self.stage} {self.error_class}{status}: {self.message} "
            f"(e.g. pair {self.example_pair_id})"
        )


class FailureGroups:
    """Streaming tally of failed calls into FailureGroups."""

    def __init__(self) -> None:
        self._groups: dict[tuple[Any, ...], FailureGroup] = {}

    def add(
        self,
        role: str,
        error_class: str | None,
        http_status: int | None,
        message: str | None,
        pair_id: int,
    ) -> None:
        stage = "judge" if role.startswith("judge") else "generation"
        message = message or ""
        key = (stage, error_class, http_status, _NUMBERS.sub("N", message)[:300])
        group = self._groups.get(key)
        if group is None:
            self._groups[key] = FailureGroup(
                stage, error_class or "unknown", http_status, message[:500], 1, pair_id
            )
        else:
            group.count += 1

    def top(self, limit: int | None = None) -> list[FailureGroup]:
        ranked = sorted(self._groups.values(), key=lambda g: -g.count)
        return ranked if limit is None else ranked[:limit]
