"""A source's valid pairs in file order: the readers' rows, columns resolved once, each row
validated, duplicate ids refused. The only per-row state is the set of ids seen."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from evaluator.dataset.readers import raw_rows
from evaluator.dataset.schema import BadRow, DatasetError, Pair, describe_source
from evaluator.dataset.validation import resolve_columns, validate_row


def iter_pairs(
    source: str,
    *,
    limit: int | None = None,
    split: str = "test",
    on_bad_row: Callable[[BadRow], None] | None = None,
    on_note: Callable[[str], None] | None = None,
) -> Iterator[Pair]:
    """Valid pairs in file order; bad rows go to `on_bad_row` and are never yielded.

    `limit` counts valid pairs. The columns are checked once, at the first row (see
    resolve_columns; `on_note` hears about optional columns read under another spelling).
    Raises DatasetError if the source is unusable as a whole or holds no rows at all.
    """
    seen: set[int] = set()
    produced = 0
    any_rows = False
    rename: dict[str, str] | None = None
    for where, row in raw_rows(source, split):
        any_rows = True
        if rename is None and not isinstance(row, BadRow):
            rename = resolve_columns(list(row), describe_source(source), on_note)
        if rename and not isinstance(row, BadRow):
            row = {rename.get(k, k): v for k, v in row.items()}
        result = row if isinstance(row, BadRow) else validate_row(row, where)
        if isinstance(result, Pair) and result.id in seen:
            result = BadRow(f"id {result.id}", "duplicate id (first occurrence kept)")
        if isinstance(result, BadRow):
            if on_bad_row is not None:
                on_bad_row(result)
            continue
        seen.add(result.id)
        yield result
        produced += 1
        if limit is not None and produced >= limit:
            return
    if not any_rows:
        raise DatasetError(f"{source} holds no rows")
