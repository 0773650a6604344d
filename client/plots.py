"""Server-side SVG plots for the operator page: line charts, bar charts, the reliability diagram.

Plain SVG strings (``markupsafe.Markup``), drawn here from numbers: the page loads no JavaScript and fetches
nothing at run time, and a test can read the plot back (one ``<circle>`` per point, one ``<polyline>`` per
series, ``data-series`` / ``data-x`` / ``data-y`` attributes, axis labels as ``<text>``). Every label is
escaped. Presentation attributes rather than CSS: a plot saved on its own still looks the same.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from markupsafe import Markup, escape

WIDTH, HEIGHT = 460, 240
MARGIN = {"left": 52, "right": 14, "top": 44, "bottom": 44}  # top: the title, then the legend
PALETTE = ("#3b5bdb", "#e8590c", "#2b8a3e", "#c2255c", "#7048e8", "#0c8599", "#f59f00", "#495057")
GRID = "#e4e7ec"
INK = "#1d2433"
MUTED = "#667085"


@dataclass(frozen=True)
class Series:
    name: str
    points: list[tuple[float, float]]  # (x, y); None-valued points are left out by the caller
    dashed: bool = False
    tips: list[str] = field(default_factory=list)  # one hover text per point (``<title>``); default "x, y"


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi] (steps of 1, 2 or 5 times a power of ten)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 12) for i in range(int((hi - first) / step + 1e-9) + 1)]


class _Frame:
    """Maps data coordinates into the plot area and draws the axes, grid, labels and title."""

    def __init__(self, x: tuple[float, float], y: tuple[float, float], width: int = WIDTH, height: int = HEIGHT):
        self.x0, self.x1 = x if x[1] > x[0] else (x[0] - 0.5, x[0] + 0.5)
        self.y0, self.y1 = y if y[1] > y[0] else (y[0] - 0.5, y[0] + 0.5)
        self.w, self.h = width, height
        self.left, self.top = MARGIN["left"], MARGIN["top"]
        self.pw = width - MARGIN["left"] - MARGIN["right"]
        self.ph = height - MARGIN["top"] - MARGIN["bottom"]

    def px(self, x: float) -> float:
        return self.left + (x - self.x0) / (self.x1 - self.x0) * self.pw

    def py(self, y: float) -> float:
        return self.top + self.ph - (y - self.y0) / (self.y1 - self.y0) * self.ph

    def axes(
        self,
        title: str,
        x_label: str,
        y_label: str,
        x_ticks: Sequence[tuple[float, str]],
        y_fmt: Callable[[float], str],
    ) -> list[str]:
        out = [f'<text class="title" x="{self.left}" y="16" font-size="13" font-weight="600" fill="{INK}">'
               f"{escape(title)}</text>"]  # fmt: skip
        for t in ticks(self.y0, self.y1):
            y = self.py(t)
            out.append(f'<line x1="{self.left}" x2="{self.left + self.pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GRID}"/>')
            out.append(f'<text x="{self.left - 6}" y="{y + 4:.1f}" font-size="10" text-anchor="end" fill="{MUTED}">'
                       f"{escape(y_fmt(t))}</text>")  # fmt: skip
        base = self.top + self.ph
        out.append(f'<line x1="{self.left}" x2="{self.left + self.pw}" y1="{base}" y2="{base}" stroke="{MUTED}"/>')
        for x, label in x_ticks:
            out.append(f'<text x="{self.px(x):.1f}" y="{base + 14}" font-size="10" text-anchor="middle"'
                       f' fill="{MUTED}">{escape(label)}</text>')  # fmt: skip
        out.append(f'<text class="x-label" x="{self.left + self.pw / 2:.1f}" y="{self.h - 6}" font-size="11"'
                   f' text-anchor="middle" fill="{MUTED}">{escape(x_label)}</text>')  # fmt: skip
        out.append(f'<text class="y-label" transform="translate(12 {self.top + self.ph / 2:.1f}) rotate(-90)"'
                   f' font-size="11" text-anchor="middle" fill="{MUTED}">{escape(y_label)}</text>')  # fmt: skip
        return out


def _svg(frame: _Frame, kind: str, body: list[str], label: str) -> Markup:
    return Markup(
        f'<svg class="plot" data-plot="{escape(kind)}" xmlns="http://www.w3.org/2000/svg" role="img"'
        f' aria-label="{escape(label)}" viewBox="0 0 {frame.w} {frame.h}" width="{frame.w}" height="{frame.h}">'
        + "".join(body)
        + "</svg>"
    )


def _legend(frame: _Frame, names: Sequence[str], colours: Sequence[str]) -> list[str]:
    out, x = [], float(frame.left + frame.pw)  # a row under the title, right-aligned
    for name, colour in reversed(list(zip(names, colours, strict=True))):  # right-aligned, in order
        x -= 14 + 6.2 * len(name)
        out.append(f'<rect x="{x:.1f}" y="23" width="9" height="9" fill="{colour}"/>'
                   f'<text x="{x + 12:.1f}" y="31" font-size="10" fill="{INK}">{escape(name)}</text>')  # fmt: skip
    return out


def _span(values: Sequence[float], pad: float = 0.0) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    return lo - pad * (hi - lo or 1), hi + pad * (hi - lo or 1)


def line_chart(
    series: Sequence[Series],
    title: str,
    x_label: str,
    y_label: str,
    x_tick: Callable[[float], str] = _fmt,
    x_ticks_at: Sequence[float] | None = None,
    x_range: tuple[float, float] | None = None,
    y_range: tuple[float, float] | None = None,
    y_fmt: Callable[[float], str] = _fmt,
    kind: str = "line",
    extra: Callable[[_Frame], list[str]] | None = None,
) -> Markup:
    """One polyline (and a circle per point) per series; ``x_range`` / ``y_range`` fix an axis (else: the data's),
    ``x_ticks_at`` the x ticks (else: round values), each labelled ``x_tick(x)``."""
    xs = [x for s in series for x, _ in s.points]
    ys = [y for s in series for _, y in s.points]
    if not xs:
        raise ValueError(f"{title}: no points to plot")
    frame = _Frame(x_range or _span(xs), y_range or _span(ys, 0.08))
    x_ticks = [(t, x_tick(t)) for t in (x_ticks_at if x_ticks_at is not None else _x_ticks(frame))]
    body = frame.axes(title, x_label, y_label, x_ticks, y_fmt)
    if extra is not None:
        body += extra(frame)
    colours = [PALETTE[i % len(PALETTE)] for i in range(len(series))]
    for s, colour in zip(series, colours, strict=True):
        pts = sorted(s.points)
        coords = " ".join(f"{frame.px(x):.1f},{frame.py(y):.1f}" for x, y in pts)
        dash = ' stroke-dasharray="5 3"' if s.dashed else ""
        body.append(f'<g class="series" data-series="{escape(s.name)}">'
                    f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>')  # fmt: skip
        tips = s.tips if len(s.tips) == len(s.points) else [f"{x_tick(x)}: {y_fmt(y)}" for x, y in s.points]
        for (x, y), tip in sorted(zip(s.points, tips, strict=True)):
            body.append(f'<circle cx="{frame.px(x):.1f}" cy="{frame.py(y):.1f}" r="3" fill="{colour}" data-x="{x:g}"'
                        f' data-y="{y:g}"><title>{escape(s.name)} {escape(tip)}</title></circle>')  # fmt: skip
        body.append("</g>")
    body += _legend(frame, [s.name for s in series], colours)
    return _svg(frame, kind, body, title)


def _x_ticks(frame: _Frame) -> list[float]:
    return [t for t in ticks(frame.x0, frame.x1, 5) if frame.x0 <= t <= frame.x1]


def bar_chart(
    bars: Sequence[tuple[str, float]],
    title: str,
    x_label: str,
    y_label: str,
    y_fmt: Callable[[float], str] = _fmt,
    threshold: tuple[float, str] | None = None,
    kind: str = "bars",
) -> Markup:
    """One ``<rect class="plot-bar">`` per (label, value), in order; ``threshold``: a dashed line at (value, label)."""
    if not bars:
        raise ValueError(f"{title}: no bars to plot")
    top = max([v for _, v in bars] + ([threshold[0]] if threshold else []))
    frame = _Frame((0.0, float(len(bars))), (0.0, top * 1.1 if top > 0 else 1.0))
    step = max(1, math.ceil(len(bars) / 8))  # at most about 8 labels under the bars
    labels = [(i + 0.5, label) for i, (label, _) in enumerate(bars) if i % step == 0]
    body = frame.axes(title, x_label, y_label, labels, y_fmt)
    slot = frame.pw / len(bars)
    for i, (label, value) in enumerate(bars):
        y = frame.py(value)
        body.append(f'<rect class="plot-bar" x="{frame.px(i) + slot * 0.12:.1f}" y="{y:.1f}" width="{slot * 0.76:.1f}"'
                    f' height="{frame.py(0) - y:.1f}" fill="{PALETTE[0]}" data-x="{escape(label)}" data-y="{value:g}">'
                    f"<title>{escape(label)}: {escape(y_fmt(value))}</title></rect>")  # fmt: skip
    if threshold is not None:
        y = frame.py(threshold[0])
        body.append(f'<line class="threshold" x1="{frame.left}" x2="{frame.left + frame.pw}" y1="{y:.1f}"'
                    f' y2="{y:.1f}" stroke="{PALETTE[3]}" stroke-dasharray="5 3"/>'
                    f'<text x="{frame.left + frame.pw - 4}" y="{y - 4:.1f}" font-size="10" text-anchor="end"'
                    f' fill="{PALETTE[3]}">{escape(threshold[1])}</text>')  # fmt: skip
    return _svg(frame, kind, body, title)


def reliability_diagram(curves: Sequence[Series], title: str = "Reliability (10 bins)") -> Markup:
    """Mean predicted probability (x) against the observed rate (y) per bin, one series per model version, over
    the diagonal of perfect calibration; both axes span [0, 1]. Empty bins are left out of a series by the caller."""

    def diagonal(frame: _Frame) -> list[str]:
        return [f'<line class="diagonal" x1="{frame.px(0):.1f}" y1="{frame.py(0):.1f}" x2="{frame.px(1):.1f}"'
                f' y2="{frame.py(1):.1f}" stroke="{MUTED}" stroke-dasharray="3 3"/>']  # fmt: skip

    return line_chart(
        curves,
        title,
        "mean predicted probability",
        "observed rate correct",
        x_tick=lambda v: f"{v:.1f}",
        x_range=(0.0, 1.0),
        y_range=(0.0, 1.0),
        y_fmt=lambda v: f"{v:.1f}",
        kind="reliability",
        extra=diagonal,
    )
