"""VAL-Bench pairs: the schema (schema), streaming readers per format (readers), row and
column checks (validation), and the valid pairs of a source (pairs.iter_pairs).

The package's names are the ones the rest of the evaluator uses; each lives in one module.
"""

from evaluator.dataset.pairs import iter_pairs
from evaluator.dataset.readers import (
    count_rows,
    has_answer_columns,
    jsonl_rows,
    parquet_rows,
    raw_rows,
)
from evaluator.dataset.schema import (
    ANSWER_COLUMNS,
    MAX_LINE_BYTES,
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    SAMPLE,
    Answers,
    BadRow,
    DatasetError,
    Pair,
    describe_source,
    sample_path,
)
from evaluator.dataset.validation import as_int, resolve_columns, validate_row

__all__ = [
    "ANSWER_COLUMNS",
    "MAX_LINE_BYTES",
    "OPTIONAL_COLUMNS",
    "REQUIRED_COLUMNS",
    "SAMPLE",
    "Answers",
    "BadRow",
    "DatasetError",
    "Pair",
    "as_int",
    "count_rows",
    "describe_source",
    "has_answer_columns",
    "iter_pairs",
    "jsonl_rows",
    "parquet_rows",
    "raw_rows",
    "resolve_columns",
    "sample_path",
    "validate_row",
]
