"""The package layout's rules, checked from the source alone (AST, no import, no subprocess):

1. No import cycle among the modules of evaluator/ and workers/. Two graphs are checked:
   - import time: the imports a module runs when it is loaded (module level, including
     those under a top-level `if`/`try`, but not `if TYPE_CHECKING:`, which never runs).
     A cycle here is a bug waiting for the next reordering of imports: no exception.
   - every import that can run, including those inside functions (again without
     `if TYPE_CHECKING:`: annotations are not a dependency at run time). An import moved
     into a function breaks the import-time cycle but not the design's: the two modules
     still need each other (the old `report` <-> `report_child` pair was such a case).
     So this graph gets the same rule; `KNOWN_CALL_TIME_CYCLES` can list a cycle that
     that is known and being removed (none today), and can only shrink.
2. workers/ never imports evaluator/ (any import, anywhere in the module): data flows
   from the evaluator to its workers, never back.
3. No module under evaluator/ or workers/ over MAX_LINES lines, except the files in
   OVERSIZED, each held to the line count it had when it was listed (a ratchet: a listed
   file that grows fails; an entry goes once its file fits).

Each rule is also run against a small deliberately bad tree, so a rule that cannot fail
would show here.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("evaluator", "workers")
MAX_LINES = 400

# Files allowed over MAX_LINES, each with its line count when listed (a ceiling: it may
# shrink, not grow; the test says when an entry can go). Empty: every module fits. A file
# that must grow past the limit for a while is listed here with a comment saying why.
OVERSIZED: dict[str, int] = {}

# Cycles that exist only through imports inside functions, as sorted module tuples.
KNOWN_CALL_TIME_CYCLES: set[tuple[str, ...]] = set()


# -- the graph --------------------------------------------------------------------------
def modules(root: Path, packages: Iterable[str] = PACKAGES) -> dict[str, Path]:
    """{dotted name: file} for every module of the packages (a package is its __init__)."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.Module, *, nested: bool) -> Iterable[ast.Import | ast.ImportFrom]:
    """Import statements that can run: at import time only (nested=False), or also inside
    functions and classes (nested=True). `if TYPE_CHECKING:` blocks never run: skipped."""
    todo: list[ast.AST] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            todo += node.orelse
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            if nested:
                todo += ast.iter_child_nodes(node)
        elif isinstance(node, ast.stmt | ast.excepthandler | ast.match_case):
            todo += ast.iter_child_nodes(node)  # class bodies, if / try / with / for / match


def _targets(name: str, node: ast.Import | ast.ImportFrom, known: dict[str, Path]) -> set[str]:
    """The modules of `known` that one import statement in module `name` loads."""
    if isinstance(node, ast.Import):
        bases = [alias.name for alias in node.names]
        froms: list[str] = []
    else:
        base = node.module or ""
        if node.level:  # relative: from the module's package, up level-1 more
            package = name.split(".")
            is_package = known.get(name, Path()).name == "__init__.py"
            keep = len(package) - (node.level - 1) - (0 if is_package else 1)
            base = ".".join(package[:keep] + ([base] if base else []))
        bases = [base]
        froms = [f"{base}.{alias.name}" for alias in node.names]
    out = {sub for sub in froms if sub in known}  # `from package import module`
    if froms and len(out) == len(froms):
        bases = []  # only modules named: the edge is to them (as import-linter counts it)
    for base in bases:
        # `import a.b.c` or `from a.b import x`: the deepest module of ours that it names.
        parts = base.split(".")
        while parts and ".".join(parts) not in known:
            parts.pop()
        if parts:
            out.add(".".join(parts))
    out.discard(name)
    return out


def import_graph(root: Path, *, nested: bool) -> dict[str, set[str]]:
    known = modules(root)
    graph = {}
    for name, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        graph[name] = set().union(
            *(_targets(name, node, known) for node in _imports(tree, nested=nested))
        )
    return graph


def cycles(graph: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(tuple(sorted(component)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


# -- the rules ---------------------------------------------------------------------------
def workers_importing_evaluator(root: Path) -> list[str]:
    """`module -> evaluator module` for every import of evaluator/ by workers/, anywhere."""
    bad = []
    for name, path in modules(root, ("workers",)).items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in _imports(tree, nested=True):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
            )
            bad += [
                f"{name} -> {n} (line {node.lineno})"
                for n in names
                if (n == "evaluator" or n.startswith("evaluator.")) and not node.level
            ]
    return bad


def size_problems(root: Path, limit: int, ceilings: dict[str, int]) -> list[str]:
    problems = []
    seen = set()
    for path in modules(root).values():
        rel = path.relative_to(root).as_posix()
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if rel in ceilings:
            seen.add(rel)
            if lines > ceilings[rel]:
                problems.append(f"{rel}: {lines} lines, grew past its ceiling {ceilings[rel]}")
            elif lines <= limit:
                problems.append(
                    f"{rel}: {lines} lines, now within {limit}: remove it from OVERSIZED"
                )
        elif lines > limit:
            problems.append(f"{rel}: {lines} lines (limit {limit}); split it")
    problems += [
        f"{rel}: listed in OVERSIZED but gone: remove the entry"
        for rel in sorted(set(ceilings) - seen)
    ]
    return problems


def test_no_import_time_cycle() -> None:
    assert cycles(import_graph(ROOT, nested=False)) == []


def test_no_call_time_cycle_beyond_the_known() -> None:
    found = set(cycles(import_graph(ROOT, nested=True)))
    assert found - KNOWN_CALL_TIME_CYCLES == set(), "new import cycle(s)"
    assert KNOWN_CALL_TIME_CYCLES - found == set(), "fixed: remove from KNOWN_CALL_TIME_CYCLES"


def test_workers_never_import_evaluator() -> None:
    assert workers_importing_evaluator(ROOT) == []


def test_module_sizes() -> None:
    assert size_problems(ROOT, MAX_LINES, OVERSIZED) == []


# -- the rules can fail ------------------------------------------------------------------
def _tree(tmp: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return tmp


def test_the_rules_catch_a_bad_tree(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "evaluator/__init__.py": "",
            # An import-time cycle through a package import and a relative import.
            "evaluator/a.py": "from evaluator import b\n",
            "evaluator/b.py": "from . import a\n",
            # A cycle only through an import inside a function (the old report pair).
            "evaluator/report.py": "import evaluator.side\n",
            "evaluator/side.py": "def f():\n    from evaluator.report import x\n",
            # Annotation-only imports never run: no edge at all.
            "evaluator/typed.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from evaluator import typed2\n"
            ),
            "evaluator/typed2.py": "from evaluator import typed\n",
            "workers/__init__.py": "",
            "workers/sim/__init__.py": "",
            "workers/sim/main.py": "def serve():\n    from evaluator.dataset import iter_pairs\n",
            "workers/ok.py": "import workers.sim.main\nfrom .sim import main\n",
            "workers/big.py": "x = 1\n" * 12,
            "workers/listed.py": "x = 1\n" * 9,
            "workers/shrunk.py": "x = 1\n" * 3,
        },
    )
    import_time = cycles(import_graph(root, nested=False))
    assert import_time == [("evaluator.a", "evaluator.b")]
    assert cycles(import_graph(root, nested=True)) == [
        ("evaluator.a", "evaluator.b"),
        ("evaluator.report", "evaluator.side"),
    ]
    assert import_graph(root, nested=False)["workers.ok"] == {"workers.sim.main"}
    assert workers_importing_evaluator(root) == ["workers.sim.main -> evaluator.dataset (line 2)"]
    ceilings = {"workers/listed.py": 8, "workers/shrunk.py": 20, "workers/gone.py": 500}
    assert size_problems(root, 5, ceilings) == [
        "workers/big.py: 12 lines (limit 5); split it",
        "workers/listed.py: 9 lines, grew past its ceiling 8",
        "workers/shrunk.py: 3 lines, now within 5: remove it from OVERSIZED",
        "workers/gone.py: listed in OVERSIZED but gone: remove the entry",
    ]
