"""The shape of a setting's declaration (the declarations are in evaluator.config.settings)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

_SAME = object()  # the judge's default is the model's
REQUIRED = object()  # a setting without a default


@dataclass(frozen=True)
class Bounds:
    """A numeric setting's range: `low` inclusive (exclusive with `above`), `high` inclusive;
    `integer` takes integers only, otherwise any finite number (TOML and argparse both
    accept nan and inf). `unit` says what the number counts, for the error message."""

    low: float
    high: float
    unit: str
    above: bool = False
    integer: bool = False


def int_bounds(low: float, high: float, unit: str) -> Bounds:
    return Bounds(low, high, unit, integer=True)


def number_bounds(low: float, high: float, unit: str, *, above: bool = False) -> Bounds:
    return Bounds(low, high, unit, above=above)


_SAME = object()  # the judge's default is the model's
REQUIRED = object()  # a setting without a default


@dataclass(frozen=True)
class Setting:
    name: str  # the field (the model's, for a role setting); the judge's is judge_<name>
    type: Any  # the field's type; TOML values are checked against it (or `toml_type`)
    default: Any = REQUIRED
    help: str | tuple[str, str] = ""  # `{role}` is model or judge; or (model's, judge's)
    role: bool = False
    request: bool = False  # changes request bytes: a resume may not change it
    kind: str = "field"  # "field" | "stored" | "input" (see the module docstring)
    judge_default: Any = _SAME
    unset: str | tuple[str, str] | None = None  # what None means, shown as the default
    shown_default: str | None = None  # the default a flag means when it is not the field's
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    bounds: Bounds | None = None
    group: str = ""
    many: str | None = None  # list flags: "append" (repeat the flag) or "+" (values after it)
    cli_type: Callable[[str], Any] | None = None  # argparse's type, when not the field's
    toml_type: Any = None  # what a TOML value may be, when more than the field's type
    server_key: str | None = None  # an input that sets this key of the role's vllm table

    @property
    def flag(self) -> str:
        """The model's (or the run's) flag without dashes: `batch_window_s` -> `batch-window`."""
        return self.name.removesuffix("_s").replace("_", "-")

    def variants(self) -> Iterator[tuple[str | None, str, str]]:
        """(role or None, field name, flag) of each setting this declaration makes."""
        if not self.role:
            yield None, self.name, self.flag
            return
        yield "model", self.name, self.flag
        yield "judge", "judge_" + self.name, "judge-" + self.flag

    def default_for(self, role: str | None) -> Any:
        if role == "judge" and self.judge_default is not _SAME:
            return self.judge_default
        return self.default

    def help_for(self, role: str | None) -> str:
        """The `--help` text, ending with the default the config gives (never written twice)."""
        index = 1 if role == "judge" else 0
        text = self.help[index] if isinstance(self.help, tuple) else self.help
        text = text.replace("{role}", role or "model")
        shown = self.default_text(role)
        return f"{text} (default: {shown})" if shown is not None else text

    def default_text(self, role: str | None) -> str | None:
        if self.shown_default is not None:
            return self.shown_default
        default = self.default_for(role)
        if default is REQUIRED or default is False or default == []:
            return None
        if default is None:
            if self.unset is None:
                return None
            return self.unset[1 if role == "judge" else 0] if isinstance(self.unset, tuple) else self.unset
        return format_default(default)


def format_default(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
