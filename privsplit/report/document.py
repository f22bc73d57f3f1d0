"""A tiny report document (sections of paragraphs, tables and figures) and its two renderings:
Markdown (figures linked) and one self-contained HTML file (figures embedded as base64 PNG)."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Table:
    headers: Sequence[str]
    rows: Sequence[Sequence[str]]
    caption: str = ""


@dataclass(frozen=True)
class Figure:
    path: Path
    caption: str


Block = str | Table | Figure


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)

    def add(self, *blocks: Block) -> Section:
        self.blocks.extend(b for b in blocks if b)
        return self


@dataclass
class Document:
    title: str
    subtitle: str
    sections: list[Section] = field(default_factory=list)

    def section(self, title: str) -> Section:
        self.sections.append(Section(title))
        return self.sections[-1]


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(doc: Document, *, relative_to: Path) -> str:
    out = [f"# {doc.title}", "", doc.subtitle, ""]
    for sec in doc.sections:
        out += [f"## {sec.title}", ""]
        for block in sec.blocks:
            if isinstance(block, Table):
                if block.caption:
                    out += [block.caption, ""]
                out.append("| " + " | ".join(_md_cell(h) for h in block.headers) + " |")
                out.append("|" + "|".join("---" for _ in block.headers) + "|")
                out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
            elif isinstance(block, Figure):
                out.append(f"![{block.caption}]({block.path.relative_to(relative_to).as_posix()})")
                out += ["", f"*{block.caption}*"]
            else:
                out.append(block)
            out.append("")
    return "\n".join(out)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;\
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.sub{color:#555}table{border-collapse:collapse;margin:.6em 0 1em;font-size:.92em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}th{background:#f3f5f8}
td:first-child,th:first-child{text-align:left}caption{caption-side:top;text-align:left;color:#444;padding:.2em 0}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{color:#555;font-size:.9em}
code{background:#f3f3f3;padding:0 .25em}
"""


def _inline(text: str) -> str:
    """Escape, then turn `code` spans and **bold** into tags (the only markup the report uses)."""
    parts = html.escape(text).split("`")
    parts = [f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts)]
    bold = "".join(parts).split("**")
    return "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(bold))


def to_html(doc: Document) -> str:
    body = [f"<h1>{_inline(doc.title)}</h1>", f'<p class="sub">{_inline(doc.subtitle)}</p>']
    for sec in doc.sections:
        body.append(f"<h2>{_inline(sec.title)}</h2>")
        for block in sec.blocks:
            if isinstance(block, Table):
                cap = f"<caption>{_inline(block.caption)}</caption>" if block.caption else ""
                head = "".join(f"<th>{_inline(str(h))}</th>" for h in block.headers)
                rows = "".join(
                    "<tr>" + "".join(f"<td>{_inline(str(c))}</td>" for c in row) + "</tr>" for row in block.rows
                )
                body.append(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
            elif isinstance(block, Figure):
                data = base64.b64encode(block.path.read_bytes()).decode("ascii")
                body.append(
                    f'<figure><img alt="{html.escape(block.caption)}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{_inline(block.caption)}</figcaption></figure>"
                )
            elif block.startswith("- "):
                items = "".join(f"<li>{_inline(line[2:])}</li>" for line in block.splitlines())
                body.append(f"<ul>{items}</ul>")
            else:
                body.append(f"<p>{_inline(block)}</p>")
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(doc.title)}</title>'
        f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n"
    )
