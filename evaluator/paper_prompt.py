"""The paper's judge prompt and response schema, fetched from the authors' repository.

The project stores where the authors' judge prompt lives and what it must hash to, never
its text. `load()` reads it from the cache, or downloads the file once: the file's sha256
is checked against the pin, then its module-level `EVALUATE_SYSTEM_PROMPT` (a string
literal with `.strip()` applied) and `OUTPUT_JSON_SCHEMA` (a dict literal) are read from
its syntax tree with `ast` (the file is never executed), the prompt is stripped as the
reference strips it, and its own sha256 is checked. The reference sends exactly that text
as the judge's system message, and that schema as the judge's response format (facts:
../shared/valbench-spec.md §6).

Where things are:

    the file     {url base}/{repo}/{commit}/{path}, url base https://raw.githubusercontent.com
                 (VALBENCH_REFERENCE_URL_BASE points it at a mirror)
    the cache    {cache dir}/paper/{commit}/{path}; the cache dir is VALBENCH_CACHE_DIR, else
                 $XDG_CACHE_HOME/valbench, else ~/.cache/valbench (see cache_dir())

Neither setting can change what is accepted: a file that does not hash to the pin is an
error, wherever it came from.
"""

from __future__ import annotations

import ast
import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CACHE_ENV = "VALBENCH_CACHE_DIR"
URL_BASE_ENV = "VALBENCH_REFERENCE_URL_BASE"
DEFAULT_URL_BASE = "https://raw.githubusercontent.com"
DOWNLOAD_TIMEOUT_S = 30.0
MAX_FILE_BYTES = 1 << 20  # the real file is 19 KB: anything this large is not it
HINT = (
    "download it ahead of time with `python -m evaluator fetch` (on a machine with internet "
    "access, then copy the cache directory), or use our own rubric with `--judge-prompt builtin`"
)


class PaperPromptError(Exception):
    """The paper's prompt cannot be had or is not the pinned one; the message says what to do."""


@dataclass(frozen=True, slots=True)
class Pin:
    """Where the reference's judge prompt lives and what it must hash to."""

    repo: str
    commit: str
    path: str
    file_sha256: str
    prompt_sha256: str
    prompt_name: str = "EVALUATE_SYSTEM_PROMPT"
    schema_name: str = "OUTPUT_JSON_SCHEMA"

    def url(self, base: str | None = None) -> str:
        base = (base or os.environ.get(URL_BASE_ENV) or DEFAULT_URL_BASE).rstrip("/")
        return f"{base}/{self.repo}/{self.commit}/{self.path}"

    def describe(self) -> str:
        """Where the prompt comes from, for summaries and reports."""
        return f"{self.repo}@{self.commit[:12]} {self.path} {self.prompt_name}"


# Checked against the authors' repository (spec §6): evaluator_flow.py at this commit is
# 19,344 bytes; its prompt, stripped, is 3,237 characters.
PAPER = Pin(
    repo="val-bench/VAL-Bench",
    commit="9acff2bc295dcc2bbc4e44c21b7d0a4e05cd9fff",
    path="evaluator_flow.py",
    file_sha256="fa91166e046d7e59061d7f31369a4375c7e6eb1963745ec731f4713bd40117d8",
    prompt_sha256="3d0b73595043f87272970c2fb0cf69827984338bc0e39d0496ed2f3206e1bd86",
)


@dataclass(frozen=True, slots=True)
class PaperProtocol:
    prompt: str
    schema: dict[str, Any]
    pin: Pin
    cached_at: Path


def cache_dir() -> Path:
    """Where valbench keeps what it downloads (the paper's prompt, hub datasets)."""
    given = os.environ.get(CACHE_ENV)
    if given:
        return Path(given)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "valbench"


def cached_path(pin: Pin, root: Path | None = None) -> Path:
    return (root or cache_dir()) / "paper" / pin.commit / pin.path


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def extract(source: bytes, pin: Pin) -> tuple[str, dict[str, Any]]:
    """The prompt (stripped) and the schema from the file's syntax tree; never executed."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError) as exc:
        raise PaperPromptError(f"{pin.path} does not parse as Python: {exc}") from None
    values: dict[str, ast.expr] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name):
                values[target.id] = node.value
    prompt_node = values.get(pin.prompt_name)
    # `"""..."""` or `"""...""".strip()`: a literal, stripped either way (the reference strips it).
    if (
        isinstance(prompt_node, ast.Call)
        and isinstance(prompt_node.func, ast.Attribute)
        and prompt_node.func.attr == "strip"
        and not prompt_node.args
        and not prompt_node.keywords
    ):
        prompt_node = prompt_node.func.value
    if not (isinstance(prompt_node, ast.Constant) and isinstance(prompt_node.value, str)):
        raise PaperPromptError(
            f"{pin.path} has no module-level string literal {pin.prompt_name} (optionally "
            "with .strip())"
        )
    schema_node = values.get(pin.schema_name)
    try:
        schema = ast.literal_eval(schema_node) if schema_node is not None else None
    except ValueError:
        schema = None
    if not isinstance(schema, dict):
        raise PaperPromptError(f"{pin.path} has no module-level dict literal {pin.schema_name}")
    return prompt_node.value.strip(), schema


def _download(url: str, timeout: float) -> bytes:
    try:
        # urllib: one GET of a small file, with the environment's proxy settings honoured.
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (http(s) only)
            data = resp.read(MAX_FILE_BYTES + 1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise PaperPromptError(f"cannot download {url}: {reason}") from None
    if len(data) > MAX_FILE_BYTES:
        raise PaperPromptError(f"{url} is larger than {MAX_FILE_BYTES} bytes: not the pinned file")
    return data


def _verified(data: bytes, pin: Pin, where: str) -> tuple[str, dict[str, Any]]:
    got = sha256(data)
    if got != pin.file_sha256:
        raise PaperPromptError(
            f"{where} has sha256 {got}, not the pinned {pin.file_sha256} "
            f"({pin.repo}@{pin.commit} {pin.path}): refusing to use it; nothing was sent"
        )
    prompt, schema = extract(data, pin)
    got = sha256(prompt.encode("utf-8"))
    if got != pin.prompt_sha256:
        raise PaperPromptError(
            f"{pin.prompt_name} in {where} has sha256 {got}, not the pinned {pin.prompt_sha256}: "
            "refusing to use it; nothing was sent"
        )
    return prompt, schema


def fetch(
    pin: Pin | None = None, *, root: Path | None = None, timeout: float = DOWNLOAD_TIMEOUT_S
) -> Path:
    """Make sure the verified file is in the cache (download it if needed); return its path.

    `pin`: PAPER unless given (looked up at call time)."""
    pin = pin or PAPER
    path = cached_path(pin, root)
    if path.is_file():
        try:
            _verified(path.read_bytes(), pin, str(path))
            return path
        except PaperPromptError:
            pass  # a damaged or foreign cache entry: replaced by a fresh download below
    url = pin.url()
    data = _download(url, timeout)
    _verified(data, pin, url)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)  # atomic: a reader never sees half a file
    return path


def load(
    pin: Pin | None = None, *, root: Path | None = None, timeout: float = DOWNLOAD_TIMEOUT_S
) -> PaperProtocol:
    """The paper's judge prompt and schema, from the cache or downloaded once and cached.

    Raises PaperPromptError (naming `fetch` and `--judge-prompt builtin`) when it is
    neither cached nor reachable, and when what was found is not the pinned file.
    """
    pin = pin or PAPER
    try:
        path = fetch(pin, root=root, timeout=timeout)
    except PaperPromptError as exc:
        raise PaperPromptError(
            f"the paper's judge prompt is not available: {exc}; {HINT}"
        ) from None
    prompt, schema = _verified(path.read_bytes(), pin, str(path))
    return PaperProtocol(prompt, schema, pin, path)
