"""The docs against the code: docs/architecture.md names every module under evaluator/
and workers/ and only modules that exist (in its tables, prose and diagrams), and every
relative link in README.md and docs/*.md points at a file that exists.

Pure file reads: no subprocess, no server, no import of the packages."""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("evaluator", "workers")
ARCHITECTURE = ROOT / "docs" / "architecture.md"

# A module path as the page writes it: `scheduler.py`, `cli/cmd_run.py`, `store/`,
# `workers/simulated/__main__.py` (relative to a package or to the repository root).
_PATH = r"[A-Za-z_][\w.-]*(?:/[\w.-]+)*(?:\.py|/)"
_BACKTICKED = re.compile(r"`(" + _PATH + r")`")
_IN_DIAGRAM = re.compile(r"(?<![\w/.-])(" + _PATH + r")(?![\w/])")
_MERMAID = re.compile(r"```mermaid\n(.*?)```", re.S)
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def modules(root: Path = ROOT) -> list[str]:
    """Every module of both packages, relative to its package (`cli/main.py`), without
    __init__.py (a package is named by its directory, `cli/`)."""
    found = []
    for package in PACKAGES:
        base = root / package
        for path in sorted(base.rglob("*.py")):
            if path.name != "__init__.py" and "__pycache__" not in path.parts:
                found.append(path.relative_to(base).as_posix())
    return found


def layout(root: Path = ROOT) -> set[str]:
    """What the layers diagram must show: each package's top-level modules and its
    subpackages (`config/`); their contents are the module table's."""
    shown = set()
    for package in PACKAGES:
        for path in (root / package).iterdir():
            if path.is_dir() and (path / "__init__.py").is_file():
                shown.add(path.name + "/")
            elif path.suffix == ".py" and path.name != "__init__.py":
                shown.add(path.name)
    return shown


def resolves(name: str, root: Path = ROOT) -> bool:
    """A path the page names exists: under a package, or from the repository root."""
    for base in (root, *(root / p for p in PACKAGES)):
        target = base / name
        if target.is_dir() if name.endswith("/") else target.is_file():
            return True
    return False


def diagrams(text: str) -> list[str]:
    """The page's Mermaid blocks."""
    return _MERMAID.findall(text)


def diagram_names(block: str) -> list[str]:
    """The module paths a Mermaid block names, label by label. In a label, a bare name
    after a path is in that path's directory: `store/<br/>db.py · writer.py` names
    store/db.py and store/writer.py; `report/outputs.py ... csvs.py`, report/csvs.py."""
    names = []
    for label in re.findall(r'"([^"]*)"', block):
        prefix = ""
        for name in _IN_DIAGRAM.findall(re.sub(r"<[^>]*>", " ", label)):  # <br/> is no path
            if "/" in name.rstrip("/"):
                names.append(name)
            else:
                names.append(name if name.endswith("/") else prefix + name)
            if "/" in name and name not in (p + "/" for p in PACKAGES):
                prefix = _in_package(name).rsplit("/", 1)[0] + "/"
    return names


def _in_package(name: str) -> str:
    """`workers/simulated/` -> `simulated/`: a path relative to its package."""
    for package in PACKAGES:
        if name.startswith(package + "/"):
            return name[len(package) + 1 :]
    return name


def missing_modules(text: str, root: Path = ROOT) -> list[str]:
    """Modules the page never names in backticks by their package-relative path."""
    named = set(_BACKTICKED.findall(text))
    return [m for m in modules(root) if m not in named]


def missing_from_layers(text: str, root: Path = ROOT) -> list[str]:
    """Top-level modules and subpackages the layers diagram (the first Mermaid block)
    does not show."""
    blocks = diagrams(text)
    shown = {_in_package(n) for n in diagram_names(blocks[0])} if blocks else set()
    shown |= {s.split("/", 1)[0] + "/" for s in shown if "/" in s.rstrip("/")}
    return sorted(layout(root) - shown)


def unknown_paths(text: str, root: Path = ROOT) -> list[str]:
    """Module paths the page names (in backticks or in a diagram) that do not exist."""
    names = set(_BACKTICKED.findall(text))
    for block in diagrams(text):
        names |= set(diagram_names(block))
    return sorted(n for n in names if not resolves(n, root))


def broken_links(files: list[Path]) -> list[str]:
    """Relative Markdown links (outside code blocks) whose file does not exist; the
    #anchor is not checked."""
    broken = []
    for md in files:
        text = _FENCE.sub("", md.read_text(encoding="utf-8"))
        for target in _LINK.findall(text):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
                continue  # a URL (http:, mailto:) or an anchor on the same page
            file_part = target.split("#", 1)[0]
            if not (md.parent / file_part).exists():
                broken.append(f"{os.path.relpath(md, ROOT)}: {target}")
    return broken


def markdown_pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_helpers_see_what_they_check():
    # Guards the checks below against passing by finding nothing.
    text = ARCHITECTURE.read_text(encoding="utf-8")
    assert len(modules()) > 50 and "cli/cmd_run.py" in modules()
    assert {"cli/", "run/", "store/", "report/", "simulated/", "calls.py"} <= layout()
    assert len(diagrams(text)) >= 2
    assert len(_BACKTICKED.findall(text)) > len(modules())
    assert sum(len(_LINK.findall(p.read_text(encoding="utf-8"))) for p in markdown_pages()) > 20


def test_architecture_page_names_every_module():
    assert missing_modules(ARCHITECTURE.read_text(encoding="utf-8")) == []


def test_layers_diagram_shows_every_package_and_top_level_module():
    assert missing_from_layers(ARCHITECTURE.read_text(encoding="utf-8")) == []


def test_architecture_page_names_only_modules_that_exist():
    assert unknown_paths(ARCHITECTURE.read_text(encoding="utf-8")) == []


def test_relative_links_in_readme_and_docs_resolve():
    assert broken_links(markdown_pages()) == []
