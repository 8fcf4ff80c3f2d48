"""Text pages of the report: headings, wrapped paragraphs and tables flowed down A4 pages.

Matplotlib draws the pages (``Figure`` without pyplot: no GUI backend, safe in worker threads).
Positions are in inches from the page's top-left corner; text sizes in points. A table row is as
tall as its most-wrapped cell; a table that does not fit continues on a new page with its header
repeated.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from rayrt.domain.patient import Structure

__all__ = ["A4_PORTRAIT_IN", "MARGIN_IN", "Column", "Flow", "new_page", "STATUS_COLOURS", "structure_colours"]

A4_PORTRAIT_IN = (8.27, 11.69)
MARGIN_IN = 0.6
#: room kept at the bottom of each page for the footer (inches)
FOOTER_IN = 0.45
#: cell backgrounds of a status (QA check, goal met / missed, review decision)
STATUS_COLOURS = {
    "pass": "#d8f0dc",
    "met": "#d8f0dc",
    "approved": "#d8f0dc",
    "review": "#fff1c2",
    "warn": "#fff1c2",
    "fail": "#f8d0d0",
    "missed": "#f8d0d0",
    "rejected": "#f8d0d0",
    "not released": "#f8d0d0",
}
_CHAR_WIDTH_EM = 0.55  # mean advance of DejaVu Sans, in em: for wrapping text to a width in inches


def structure_colours(structures: list[Structure]) -> dict[str, tuple[float, float, float]]:
    """Each structure's display colour (RGB 0-1): its own, unless an earlier structure has the same
    one (e.g. the default red of structures made without a colour), then one of ``tab20``."""
    import matplotlib

    palette = matplotlib.colormaps["tab20"]
    out: dict[str, tuple[float, float, float]] = {}
    used: set[tuple[int, int, int]] = set()
    spare = 0
    for s in structures:
        if s.colour in used:
            r, g, b, _ = palette(spare % 20)
            spare += 1
            out[s.name] = (float(r), float(g), float(b))
        else:
            used.add(s.colour)
            out[s.name] = (s.colour[0] / 255.0, s.colour[1] / 255.0, s.colour[2] / 255.0)
    return out


def new_page() -> Figure:
    """A blank A4 portrait page."""
    return Figure(figsize=A4_PORTRAIT_IN, dpi=100)


def _chars(width_in: float, size_pt: float) -> int:
    return max(4, int(width_in * 72.0 / (size_pt * _CHAR_WIDTH_EM)))


def wrap(text: str, width_in: float, size_pt: float) -> list[str]:
    """``text`` wrapped to lines that fit ``width_in`` inches at ``size_pt`` (explicit newlines kept)."""
    out: list[str] = []
    for para in str(text).split("\n"):
        out.extend(textwrap.wrap(para, _chars(width_in, size_pt), break_long_words=True) or [""])
    return out


@dataclass(frozen=True)
class Column:
    """A table column: header label, width (inches), alignment of its cells."""

    label: str
    width_in: float
    align: str = "left"


class Flow:
    """Content flowed down A4 pages, a new page when the next block does not fit."""

    def __init__(self, size_pt: float = 8.5) -> None:
        self.size_pt = size_pt
        self.pages: list[Figure] = []
        self.y = 0.0
        self.page_break()

    # ------------------------------------------------------------------ geometry
    @property
    def width_in(self) -> float:
        return A4_PORTRAIT_IN[0] - 2 * MARGIN_IN

    def _line_in(self, size_pt: float) -> float:
        return size_pt * 1.45 / 72.0

    def _room(self) -> float:
        return A4_PORTRAIT_IN[1] - FOOTER_IN - self.y

    def page_break(self) -> None:
        self.pages.append(new_page())
        self.y = MARGIN_IN

    def _need(self, height_in: float) -> None:
        if height_in > self._room() and self.y > MARGIN_IN + 1e-6:
            self.page_break()

    def _text(self, x_in: float, text: str, size_pt: float, **kw) -> None:
        w, h = A4_PORTRAIT_IN
        self.pages[-1].text(x_in / w, 1.0 - self.y / h, text, fontsize=size_pt, va="top", **kw)

    # ------------------------------------------------------------------ blocks
    def space(self, height_in: float = 0.12) -> None:
        self.y += height_in

    def title(self, text: str, size_pt: float = 16.0) -> None:
        self._need(self._line_in(size_pt) * 2)
        self._text(MARGIN_IN, text, size_pt, weight="bold")
        self.y += self._line_in(size_pt) * 1.2

    def heading(self, text: str, size_pt: float = 11.5) -> None:
        """A section heading, kept on the page of the three lines that follow it."""
        self._need(self._line_in(size_pt) + 3 * self._line_in(self.size_pt))
        self.y += 0.08
        self._text(MARGIN_IN, text, size_pt, weight="bold", color="#1f3a5f")
        self.y += self._line_in(size_pt) * 1.1

    def para(
        self, text: str, size_pt: float | None = None, colour: str = "black", indent_in: float = 0.0, **kw
    ) -> None:
        """A paragraph wrapped to the text width."""
        size = size_pt or self.size_pt
        for line in wrap(text, self.width_in - indent_in, size):
            self._need(self._line_in(size))
            self._text(MARGIN_IN + indent_in, line, size, color=colour, **kw)
            self.y += self._line_in(size)

    def fields(self, rows: list[tuple[str, str]], key_in: float = 1.6) -> None:
        """``key: value`` lines, the keys in bold in a column of ``key_in`` inches."""
        size = self.size_pt
        for key, value in rows:
            lines = wrap(value, self.width_in - key_in, size)
            self._need(self._line_in(size) * len(lines))
            self._text(MARGIN_IN, key, size, weight="bold")
            for line in lines:
                self._text(MARGIN_IN + key_in, line, size)
                self.y += self._line_in(size)

    def axes(self, height_in: float, left_in: float = 0.55, bottom_in: float = 0.55):
        """Axes of ``height_in`` inches (labels included) across the text width at the current position."""
        self._need(height_in)
        w, h = A4_PORTRAIT_IN
        box = (
            (MARGIN_IN + left_in) / w,
            1.0 - (self.y + height_in - bottom_in) / h,
            (self.width_in - left_in) / w,
            (height_in - bottom_in - 0.1) / h,
        )
        self.y += height_in
        return self.pages[-1].add_axes(box)

    def table(
        self,
        columns: list[Column],
        rows: list[list[str]],
        colours: list[list[str | None]] | None = None,
        size_pt: float | None = None,
    ) -> None:
        """A table: header row, then each row as tall as its most-wrapped cell; ``colours`` (same
        shape as ``rows``) fills cells. Continues on the next page with the header repeated."""
        size = size_pt or self.size_pt
        line = self._line_in(size)
        pad = 0.04

        def draw_row(cells: list[list[str]], fills: list[str | None], bold: bool) -> None:
            height = line * max(1, max(len(c) for c in cells)) + 2 * pad
            w, h = A4_PORTRAIT_IN
            x = MARGIN_IN
            fig = self.pages[-1]
            for col, text_lines, fill in zip(columns, cells, fills):
                fig.patches.append(
                    Rectangle(
                        (x / w, 1.0 - (self.y + height) / h),
                        col.width_in / w,
                        height / h,
                        transform=fig.transFigure,
                        facecolor=fill or ("#e8edf3" if bold else "white"),
                        edgecolor="#9aa5b1",
                        linewidth=0.4,
                    )
                )
                tx = {"left": x + pad, "right": x + col.width_in - pad, "center": x + col.width_in / 2}[col.align]
                for n, t in enumerate(text_lines):
                    fig.text(
                        tx / w,
                        1.0 - (self.y + pad + n * line) / h,
                        t,
                        fontsize=size,
                        va="top",
                        ha=col.align,
                        weight="bold" if bold else "normal",
                    )
                x += col.width_in
            self.y += height

        header = [wrap(c.label, c.width_in - 2 * pad, size * 1.15) for c in columns]  # bold: wider glyphs
        header_h = line * max(len(c) for c in header) + 2 * pad
        self._need(header_h + line + 2 * pad)
        draw_row(header, [None] * len(columns), True)
        for r, row in enumerate(rows):
            cells = [wrap(v, c.width_in - 2 * pad, size) for c, v in zip(columns, row)]
            height = line * max(len(c) for c in cells) + 2 * pad
            if height > self._room():
                self.page_break()
                draw_row(header, [None] * len(columns), True)
            draw_row(cells, list(colours[r]) if colours else [None] * len(columns), False)
        self.y += 0.08
