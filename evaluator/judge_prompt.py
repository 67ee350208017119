"""Which judge prompt a run sends: `paper` (the authors' exact prompt and schema, fetched and
verified by evaluator.paper_prompt), `builtin` (our wording of the rubric) or a file.

A file's text is sent as written except for trailing line breaks, which are removed: an
editor ends a saved file with one, and the reference strips its prompt, so the authors'
prompt saved to a file is sent byte for byte as the reference sends it. Nothing else
(leading text, spaces, line breaks inside) is changed; the sha256 that summary.json records
is that of the text sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluator import paper_prompt, protocol

PAPER = "paper"
BUILTIN = "builtin"
DEFAULT_FOR_RUN = PAPER  # `run` and `calibrate`; the demo keeps builtin


class JudgePromptError(Exception):
    """The judge prompt asked for cannot be used; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class JudgePrompt:
    text: str
    source: str  # "paper" | "builtin" | "file:PATH" (RunConfig.judge_prompt_source)
    schema: dict[str, Any] | None  # None: protocol.VERDICT_SCHEMA

    def config_values(self) -> dict[str, Any]:
        return {
            "judge_prompt": self.text,
            "judge_prompt_source": self.source,
            "judge_schema": self.schema,
        }


def read_prompt_file(path: Path, what: str = "judge prompt file") -> str:
    """A prompt file's text, trailing line breaks removed (see the module docstring)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise JudgePromptError(f"cannot read {what} {path}: {exc}") from None
    if not text.strip():
        raise JudgePromptError(f"{what} {path} is empty")
    return text.rstrip("\r\n")


def resolve(choice: str | Path) -> JudgePrompt:
    """`paper`, `builtin`, or a path (a file literally named `paper` is `./paper`)."""
    if choice == BUILTIN:
        return JudgePrompt(protocol.DEFAULT_JUDGE_PROMPT, BUILTIN, None)
    if choice == PAPER:
        try:
            paper = paper_prompt.load()
        except paper_prompt.PaperPromptError as exc:
            raise JudgePromptError(str(exc)) from None
        return JudgePrompt(paper.prompt, PAPER, paper.schema)
    path = Path(choice)
    return JudgePrompt(read_prompt_file(path), f"file:{path.resolve()}", None)
