"""A small, dependency-free HTML report builder (``runs/<name>/report.html``).

The report is one static file; images are referenced by relative path (keep them beside it), so
the run folder can be zipped or served as is. Every piece of text is HTML-escaped.

Example:
    >>> import tempfile, os
    >>> r = HtmlReport("demo")
    >>> r.heading("Test metrics")
    >>> r.table([{"frame": "17", "dice": 0.95}], floatfmt=".4f")
    >>> path = r.write(os.path.join(tempfile.mkdtemp(), "report.html"))
    >>> "<td>0.9500</td>" in open(path).read()
    True
"""

from __future__ import annotations

import datetime as _dt
import html
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from seglab._files import write_text_atomic

__all__ = ["HtmlReport", "format_value"]

_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2rem auto; max-width: 1200px;
       color: #222; padding: 0 1rem; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { font-size: 1.25rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
.meta { color: #666; font-size: .9rem; }
table { border-collapse: collapse; margin: .6rem 0; font-size: .9rem; }
th, td { border: 1px solid #ddd; padding: .25rem .6rem; text-align: right; }
th { background: #f4f4f4; } td:first-child, th:first-child, td.text { text-align: left; }
figure { margin: 1rem 0; } figcaption { color: #555; font-size: .9rem; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
pre { background: #f7f7f7; padding: .8rem; overflow-x: auto; font-size: .85rem; }
code { background: #f4f4f4; padding: 0 .2rem; }
.summary { font-family: monospace; font-size: 1.05rem; background: #eef6ee; padding: .6rem; }
"""


def format_value(value: Any, floatfmt: str = ".4f") -> str:
    """Text for a table cell: floats with ``floatfmt``, NaN/None as an em dash, inf as ∞."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        if math.isinf(value):
            return "∞" if value > 0 else "-∞"
        return format(value, floatfmt)
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10000 else str(value)
    return str(value)


def _cell(value: Any, floatfmt: str) -> str:
    """A ``<td>``; text that is not a number (a sentence, a name) is left-aligned."""
    text = format_value(value, floatfmt)
    numeric = not isinstance(value, str) or _looks_numeric(value)
    return f"<td>{html.escape(text)}</td>" if numeric else f'<td class="text">{html.escape(text)}</td>'


def _looks_numeric(text: str) -> bool:
    """``"0.95"``, ``"1,234"``, ``"23.3 px"``, ``"2.0 min"``, ``"—"``: a number with at most a unit."""
    words = text.split()
    if not words or len(words) > 2:
        return False
    head = words[0].replace(",", "").rstrip("%")
    try:
        float(head)
    except ValueError:
        return head in ("—", "∞", "-∞")
    return True


class HtmlReport:
    """Collects headings, paragraphs, tables and figures, then writes one HTML page.

    Args:
        title: page title and top heading.
        subtitle: a line under the title (default: the creation time).
    """

    def __init__(self, title: str, subtitle: str | None = None) -> None:
        self.title = title
        stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
        self.subtitle = subtitle if subtitle is not None else f"written {stamp}"
        self._parts: list[str] = []

    def heading(self, text: str) -> None:
        """A section heading."""
        self._parts.append(f"<h2>{html.escape(text)}</h2>")

    def paragraph(self, text: str, *, css_class: str | None = None) -> None:
        """A paragraph of plain text (escaped)."""
        cls = f' class="{html.escape(css_class)}"' if css_class else ""
        self._parts.append(f"<p{cls}>{html.escape(text)}</p>")

    def preformatted(self, text: str) -> None:
        """A block of monospaced text (config dumps, commands)."""
        self._parts.append(f"<pre>{html.escape(text)}</pre>")

    def table(
        self,
        rows: Sequence[Mapping[str, Any]],
        columns: Sequence[str] | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        floatfmt: str = ".4f",
    ) -> None:
        """A table with one row per mapping.

        Args:
            rows: the rows.
            columns: which keys, in order (default: all keys in first-seen order).
            headers: display names for some columns.
            floatfmt: format of float cells.
        """
        if columns is None:
            columns = []
            for row in rows:
                columns.extend(k for k in row if k not in columns)
        headers = dict(headers or {})
        head = "".join(f"<th>{html.escape(headers.get(c, c))}</th>" for c in columns)
        body = "".join(
            "<tr>" + "".join(_cell(row.get(c), floatfmt) for c in columns) + "</tr>" for row in rows
        )
        self._parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def figure(
        self,
        src: str | os.PathLike[str],
        caption: str = "",
        *,
        alt: str | None = None,
        link: str | os.PathLike[str] | None = None,
    ) -> None:
        """An image (a path relative to the report file, or a URL) with a caption.

        Args:
            src: the image.
            caption: text under the image.
            alt: alternative text (default: the caption).
            link: make the image a link to this target (e.g. the full-resolution picture).
        """
        src = Path(src).as_posix() if not isinstance(src, str) else src
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        alt_text = html.escape(alt if alt is not None else caption or str(src))
        img = f'<img src="{html.escape(src)}" alt="{alt_text}" loading="lazy">'
        if link is not None:
            target = Path(link).as_posix() if not isinstance(link, str) else link
            img = f'<a href="{html.escape(target)}">{img}</a>'
        self._parts.append(f"<figure>{img}{cap}</figure>")

    def render(self) -> str:
        """The page as a string."""
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body>"
            f'<h1>{html.escape(self.title)}</h1><p class="meta">{html.escape(self.subtitle)}</p>'
            + "\n".join(self._parts)
            + "</body></html>\n"
        )

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the page atomically (parent folders created)."""
        return write_text_atomic(path, self.render())
