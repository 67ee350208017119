"""Regenerate the docs images of the viewer and of `compare` (SIMULATED runs).

    python docs/make_images.py     # needs Debian's chromium; writes docs/*.png

Three demo runs of the bundled SAMPLE through the simulated backend, both judge orders:
two of one model (mixture persona, 60% and 100% consistent) and one that refuses one side.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evaluator.cli import main  # noqa: E402
from evaluator.view.server import ViewerThread  # noqa: E402

DOCS = ROOT / "docs"
RUNS = {
    "share-60": ("--persona", "mixture", "--share", "0.6"),
    "share-100": ("--persona", "mixture", "--share", "1.0"),
    "refuse-one": ("--persona", "refuse_one"),
}


def screenshot(url: str, path: Path, profile: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium is not installed (apt-get install chromium)")
    subprocess.run(
        [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile}",
            f"--screenshot={path}", "--window-size=1280,900", url,
        ],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip


def run() -> None:
    with tempfile.TemporaryDirectory(prefix="valbench-docs-") as tmp:
        base = Path(tmp)
        for name, flags in RUNS.items():
            args = ["demo", "--out", str(base / name), "--quiet", "--latency-ms", "0"]
            assert main([*args, "--judge-order", "both", *flags]) == 0, name
        dirs = [base / name for name in RUNS]
        assert main(["compare", *map(str, dirs), "--out", str(base / "board")]) == 0
        shutil.copy(base / "board" / "compare.png", DOCS / "compare.png")
        # The list of two runs of one model, where their judges disagree.
        with ViewerThread(dirs[:2]) as viewer:
            viewer.wait_ready()
            screenshot(viewer.url + "?disagree=runs", DOCS / "viewer-list.png", base / "p")
        # A flip, judged in both orders: the answers, then the two verdicts.
        with ViewerThread(dirs[:1]) as viewer:
            viewer.wait_ready()
            screenshot(viewer.url + "pair/900003", DOCS / "viewer-pair.png", base / "p")
    print("written: docs/compare.png, docs/viewer-list.png, docs/viewer-pair.png")


if __name__ == "__main__":
    run()
