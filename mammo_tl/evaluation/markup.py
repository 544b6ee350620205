"""Tables of the reports, as Markdown and as HTML."""
from __future__ import annotations

import html
from collections.abc import Iterable, Sequence


def md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def html_table(h: Sequence[str], rs: Iterable[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in h)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rs)
    return f"<table border=1 cellpadding=4><tr>{head}</tr>{body}</table>"
