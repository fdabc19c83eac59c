"""report.html: report.md as one self-contained page, its figures inlined.

report.md links its figures by relative path (``plots/miou.png``), which a Markdown viewer beside the
files shows, but MLflow's artifact view renders Markdown without images and shows HTML in a sandbox
that reaches no other file. The same report as a single HTML file with each figure embedded as a
data URI reads the same everywhere: in MLflow, in DVC's cache, mailed to a co-author.
"""

from __future__ import annotations

import base64
import mimetypes
from html import escape
from pathlib import Path

from markdown_it import MarkdownIt

STYLE = """body{font:15px/1.5 system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;margin:1rem 0;font-size:13px}th,td{border:1px solid #ccc;padding:2px 8px}
td{text-align:right}td:first-child,td:nth-child(2){text-align:left}img{max-width:100%}"""


def _data_uri(path: Path) -> str:
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode()}"


def standalone(report: str, base: Path, title: str) -> str:
    """The Markdown `report` as an HTML page; every image it links below `base` is embedded, and a
    missing one is an error rather than a broken picture."""
    md = MarkdownIt("commonmark").enable("table")
    tokens = md.parse(report)
    for token in tokens:
        for child in token.children or []:
            if child.type == "image":
                src = str(child.attrGet("src"))
                if "://" not in src and not src.startswith("data:"):
                    child.attrSet("src", _data_uri(base / src))
    body = md.renderer.render(tokens, md.options, {})
    return (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{escape(title)}</title>"
            f"<style>{STYLE}</style></head>\n<body>\n{body}</body></html>\n")
