"""report.html: report.md rendered by a Markdown library, plots inlined, one file to mail.

markdown-it-py renders it: CommonMark with GFM tables, maintained (executablebooks), and
with a safe mode (`html: False`: raw HTML in the text is escaped, not passed through),
which Python-Markdown no longer has. The report's text holds what endpoints and datasets
said (failure messages, model names), so links and remote images are off too: only the
report's own plots become images, inlined as data: URLs, each a figure with its caption.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml
from markdown_it.token import Token

PLOT_DIR = "plots"
STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;"
    "color:#222}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
    "padding:3px 8px;text-align:right}th{background:#f3f3f3}td:first-child,th:first-child"
    "{text-align:left}blockquote{background:#fff3f0;border-left:4px solid #b03030;"
    "margin:1em 0;padding:.5em}blockquote p{margin:0}"
    "img{max-width:100%}figure{margin:1em 0}"
)


def _image(self: Any, tokens: Sequence[Token], idx: int, options: Any, env: Any) -> str:
    token = tokens[idx]
    if not token.meta.get("figure"):
        return escapeHtml(token.content)  # not one of our plots: its alt text only
    caption = escapeHtml(token.content)
    return self.image(tokens, idx, options, env) + f"<figcaption>{caption}</figcaption>"


def _parser() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False}).enable("table").disable(["link", "autolink"])
    md.add_render_rule("image", _image)
    return md


def _inline_plots(tokens: list[Token], out_dir: Path) -> None:
    """A paragraph that is one image of out_dir/plots becomes a figure with the PNG inline."""
    plots = (out_dir / PLOT_DIR).resolve()
    for i, token in enumerate(tokens):
        children = token.children or []
        if token.type != "inline" or len(children) != 1 or children[0].type != "image":
            continue
        if tokens[i - 1].type != "paragraph_open":
            continue
        image = children[0]
        path = (out_dir / str(image.attrGet("src"))).resolve()
        if path.parent != plots or not path.is_file():
            continue
        data = base64.b64encode(path.read_bytes()).decode()
        image.attrSet("src", f"data:image/png;base64,{data}")
        image.meta["figure"] = True
        tokens[i - 1].tag = tokens[i + 1].tag = "figure"


def render_html(markdown: str, out_dir: Path, extra: str = "") -> str:
    """A self-contained page from report.md, images inlined; `extra`: HTML of our own
    appended at the end (evaluator.report.share's pairs)."""
    md = _parser()
    tokens = md.parse(markdown)
    _inline_plots(tokens, out_dir)
    body = md.renderer.render(tokens, md.options, {})
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>VAL-Bench report</title><style>{STYLE}</style></head><body>"
        + body
        + extra
        + "</body></html>\n"
    )
