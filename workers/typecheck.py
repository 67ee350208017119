"""One strict type check for settings read from TOML: the run config's keys
(evaluator.config.loader) and the `[model.vllm]` / `[judge.vllm]` tables (server_settings).

pydantic checks a value against a type hint in strict mode: no coercion ("5" is not an
int, true is not a number, an int is a float), and generics are checked item by item
(list[str]). It replaces the two hand-kept tables of isinstance() tuples these settings
had, each beside the type hints it repeated.
"""

from __future__ import annotations

import types
import typing
from functools import cache
from typing import Any


@cache
def _adapter(hint: Any) -> Any:
    from pydantic import TypeAdapter  # imported when a file is read, not at start-up

    return TypeAdapter(hint)


def matches(value: Any, hint: Any) -> bool:
    """Whether `value` is of type `hint` (e.g. `int | None`, `list[str]`), strictly."""
    from pydantic import ValidationError

    try:
        _adapter(hint).validate_python(value, strict=True)
    except ValidationError:
        return False
    return True


def alternatives(hint: Any) -> list[Any]:
    """The types a hint allows, None left out: `int | float | None` -> [int, float]."""
    is_union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    return [t for t in (typing.get_args(hint) if is_union else (hint,)) if t is not type(None)]
