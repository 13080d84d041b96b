"""A hand-made SVG bar chart of side_by_side.py's speed results (no plotting dependency): tokens/s of
wasm and both native llama-bench builds, per model and weight type, one panel per test, log scale."""

from __future__ import annotations

import math
from html import escape
from typing import Any

from report import ENGINES, fmt, median

SERIES = (("native", "#4c72b0"), ("avx2", "#55a868"), ("wasm", "#dd8452"))
WIDTH, PANEL_H, TOP, LEFT, RIGHT, BOTTOM = 820, 230, 56, 64, 16, 44


def _text(x: float, y: float, s: str, size: int = 11, anchor: str = "middle", extra: str = "") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}"{extra}>{escape(s)}</text>'


def _panel(rows: list[dict[str, Any]], test: str, y0: float) -> list[str]:
    values = [median(r["samples"][k]) for r in rows for k, _ in SERIES if r["samples"].get(k)]
    if not values:
        return []
    lo, hi = 10 ** math.floor(math.log10(min(values))), 10 ** math.ceil(math.log10(max(values)))
    plot_h = PANEL_H - BOTTOM - 20

    def y(v: float) -> float:
        return y0 + 20 + plot_h * (1 - (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)))

    out = [_text(LEFT, y0 + 12, f"{test} (tokens/s, log scale)", 13, "start", ' font-weight="bold"')]
    decade = lo
    while decade <= hi:
        for m in (1, 2, 5):
            v = decade * m
            if v > hi:
                break
            dash = "" if m == 1 else ' stroke-dasharray="2,3"'
            out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#ddd"{dash}/>')
            out.append(_text(LEFT - 6, y(v) + 4, f"{v:g}", 10, "end"))
        decade *= 10
    group_w = (WIDTH - LEFT - RIGHT) / len(rows)
    bar_w = group_w * 0.8 / len(SERIES)
    for i, r in enumerate(rows):
        gx = LEFT + i * group_w + group_w * 0.1
        for j, (key, color) in enumerate(SERIES):
            samples = r["samples"].get(key)
            if not samples:
                continue
            v, x = median(samples), gx + j * bar_w
            out.append(f'<rect x="{x:.1f}" y="{y(v):.1f}" width="{bar_w - 2:.1f}" height="{y(lo) - y(v):.1f}" '
                       f'fill="{color}"><title>{escape(ENGINES[key])}: {fmt(v)} t/s</title></rect>')
            out.append(_text(x + bar_w / 2 - 1, y(v) - 3, fmt(v), 9))
        out.append(_text(LEFT + (i + 0.5) * group_w, y(lo) + 15, r["type"], 11))
        out.append(_text(LEFT + (i + 0.5) * group_w, y(lo) + 28, r["model"], 9, extra=' fill="#555"'))
    out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(lo):.1f}" y2="{y(lo):.1f}" stroke="#333"/>')
    return out


def render(speed: list[dict[str, Any]], *, threads: int, title: str) -> str:
    """The SVG document: one panel per test (pp first), the rows run with `threads` threads."""
    tests = sorted({r["test"] for r in speed if r["threads"] == threads}, key=lambda t: (not t.startswith("pp"), t))
    height = TOP + PANEL_H * len(tests)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
           f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif">',
           f'<rect width="{WIDTH}" height="{height}" fill="white"/>', _text(WIDTH / 2, 20, title, 14)]
    lx = LEFT
    for key, color in SERIES:
        out.append(f'<rect x="{lx}" y="32" width="12" height="12" fill="{color}"/>')
        out.append(_text(lx + 16, 42, ENGINES[key], 11, "start"))
        lx += 24 + 7 * len(ENGINES[key])
    for k, test in enumerate(tests):
        out += _panel([r for r in speed if r["test"] == test and r["threads"] == threads], test, TOP + k * PANEL_H)
    out.append("</svg>")
    return "\n".join(out) + "\n"
