"""The one renderer of results pages: a page as a list of blocks, written as markdown and as one self-contained
HTML file. ``msresnet report`` and ``msresnet scan`` both build blocks and render them here.

Blocks are tuples: ``("h1" | "h2" | "p", text)``, ``("table", header, rows)``, ``("img", png path, alt text)`` and
``("list", items)``.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

__all__ = ["Block", "html_page", "html_table", "markdown_table", "png_img", "render_html", "render_markdown"]

Block = tuple  # ("h1", text), ("table", header, rows), ("img", path, alt), ("list", items), ...


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table (numbers right-aligned)."""
    align = ["---" if i < 2 else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def png_img(path: str | Path, alt: str) -> str:
    """An ``<img>`` tag with the PNG embedded as base64, so the page needs no other file."""
    b64 = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{b64}'>"


def html_page(title: str, body: Sequence[str]) -> str:
    """A complete self-contained HTML document with the report style."""
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body>" + "\n".join(body) + "</body></html>\n"
    )


_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th:first-child, td:first-child, th:nth-child(2), td:nth-child(2) { text-align: left; }
thead { background: #f3f3f3; } tbody tr:nth-child(even) { background: #fafafa; }
img { max-width: 100%; } .note { color: #666; font-size: 0.9em; } code { background: #f3f3f3; padding: 0 3px; }
"""


def render_markdown(blocks: Sequence[Block], out: str | Path) -> str:
    """The page as markdown; images are linked relative to ``out`` (the page's folder), table cells escaped."""
    md: list[str] = []
    for b in blocks:
        if b[0] == "h1":
            md += [f"# {b[1]}", ""]
        elif b[0] == "h2":
            md += [f"## {b[1]}", ""]
        elif b[0] == "p":
            md += [b[1], ""]
        elif b[0] == "table":
            md += [markdown_table(b[1], [[c.replace("|", "\\|") for c in r] for r in b[2]]), ""]
        elif b[0] == "img":
            md += [f"![{b[2]}]({Path(b[1]).relative_to(out)})", ""]
        elif b[0] == "list":
            md += [*[f"- {item}" for item in b[1]], ""]
    return "\n".join(md)


def render_html(blocks: Sequence[Block]) -> str:
    """The page as one self-contained HTML document (images embedded), titled by its first block."""
    body: list[str] = []
    for b in blocks:
        if b[0] in ("h1", "h2"):
            body.append(f"<{b[0]}>{html.escape(b[1])}</{b[0]}>")
        elif b[0] == "p":
            body.append(f"<p class='note'>{html.escape(b[1])}</p>")
        elif b[0] == "table":
            body.append(html_table(b[1], b[2]))
        elif b[0] == "img":
            body.append(png_img(b[1], b[2]))
        elif b[0] == "list":
            body.append("<ul>" + "".join(f"<li>{html.escape(item)}</li>" for item in b[1]) + "</ul>")
    return html_page(blocks[0][1], body)
