"""`audit --report`: the precision map as a self-contained HTML page (inline SVG) or a PNG.

One grid per panel: decoder layers (rows) x module kinds (columns). The first panel is what is
stored; then one panel per engine reading whose view differs from the tensors, coloured by what
that engine would run and with a cross on every cell it misreads. Nothing is fetched from the
network; the PNG is written by a small pure-Python encoder (zlib) with a built-in 5x7 font, so the
report needs no plotting library.
"""

from __future__ import annotations

import html
import struct
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mxmix.fsutil import atomic_output_file

COLOURS: dict[str, tuple[int, int, int]] = {
    "mxfp8": (59, 130, 196),
    "bf16": (240, 160, 48),
    "fp8": (142, 90, 216),
    "f16": (232, 197, 71),
    "f32": (150, 120, 60),
    "mixed": (150, 155, 160),
    "error": (214, 40, 40),
}
OTHER_COLOUR = (120, 200, 160)
EMPTY = (236, 236, 236)
LEGEND_LABELS = {
    "mxfp8": "MXFP8", "bf16": "BF16", "fp8": "FP8 (not MX)", "f16": "F16", "f32": "F32",
    "mixed": "mixed in cell", "error": "engine raises",
}
KIND_ORDER = ("q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj", "gate_proj", "up_proj", "gate_up_proj",
              "down_proj")
TOP_ROW = "top"


@dataclass
class Cell:
    category: str                    # a COLOURS key (or another precision name)
    flagged: bool = False            # the engine misreads at least one module of the cell
    tip: list[str] = field(default_factory=list)


@dataclass
class Panel:
    title: str
    subtitle: str
    cells: dict[tuple[str, str], Cell]
    flagged: int = 0


@dataclass
class PrecisionMap:
    checkpoint: str
    rows: list[str]
    cols: list[str]
    panels: list[Panel]
    findings: list[Any] = field(default_factory=list)


def _kind_key(kind: str) -> tuple[int, int, str]:
    base = kind.rsplit(".", 1)[-1]
    expert = kind.startswith("experts")
    return (int(expert), KIND_ORDER.index(base) if base in KIND_ORDER else len(KIND_ORDER), kind)


def _merge(cats: set[str]) -> str:
    return next(iter(cats)) if len(cats) == 1 else ("error" if "error" in cats else "mixed")


def build_map(result: Any) -> PrecisionMap:
    """Rows: decoder layers, then one "top" row for modules outside layers (lm_head...)."""
    plan = result.plan
    rows_of: dict[tuple[str, str], list[Any]] = defaultdict(list)
    layer_kinds: set[str] = set()
    top_kinds: list[str] = []
    layers: set[int] = set()
    for r in plan.rows:
        m = r.module
        if m.layer is None:
            key = (TOP_ROW, m.path)
            if m.path not in top_kinds:
                top_kinds.append(m.path)
        else:
            key = (str(m.layer), m.kind)
            layers.add(m.layer)
            layer_kinds.add(m.kind)
        rows_of[key].append(r)
    row_labels = [str(n) for n in sorted(layers)] + ([TOP_ROW] if top_kinds else [])
    cols = sorted(layer_kinds, key=_kind_key) + top_kinds
    stored: dict[tuple[str, str], Cell] = {}
    for key, members in rows_of.items():
        cats = {r.stored for r in members}
        stored[key] = Cell(_merge(cats), False, [f"{r.module.path}: stored {r.stored}" for r in members[:8]])
    panels = [Panel("stored tensors", f"{len(plan.rows)} Linear modules", stored)]
    verdicts = {v.engine: v for v in result.verdicts}
    for engine in plan.engines:
        v = verdicts.get(engine)
        if v is None or v.clean:
            continue
        cells: dict[tuple[str, str], Cell] = {}
        flagged = 0
        for key, members in rows_of.items():
            cats = {r.runs_as(engine) for r in members}
            bad = [r for r in members if r.disagrees(engine)]
            flagged += bool(bad)
            tips = [f"{r.module.path}: stored {r.stored}, {engine} runs {r.runs_as(engine)}"
                    + (f" ({r.decisions[engine].reason})" if r in bad else "") for r in (bad or members)[:8]]
            cells[key] = Cell(_merge(cats), bool(bad), tips)
        loads = "loads this dialect" if v.consumes else "does not load this dialect"
        panels.append(Panel(f"{engine} {v.version}", f"{loads}; misreads {flagged} cell(s)", cells, flagged))
    return PrecisionMap(result.checkpoint, row_labels, cols, panels, list(result.findings))


# ---- PNG ------------------------------------------------------------------------------------------

_FONT_ROWS = {
    "A": "01110 10001 10001 11111 10001 10001 10001", "B": "11110 10001 10001 11110 10001 10001 11110",
    "C": "01110 10001 10000 10000 10000 10001 01110", "D": "11100 10010 10001 10001 10001 10010 11100",
    "E": "11111 10000 10000 11110 10000 10000 11111", "F": "11111 10000 10000 11110 10000 10000 10000",
    "G": "01110 10001 10000 10111 10001 10001 01111", "H": "10001 10001 10001 11111 10001 10001 10001",
    "I": "01110 00100 00100 00100 00100 00100 01110", "J": "00111 00010 00010 00010 00010 10010 01100",
    "K": "10001 10010 10100 11000 10100 10010 10001", "L": "10000 10000 10000 10000 10000 10000 11111",
    "M": "10001 11011 10101 10101 10001 10001 10001", "N": "10001 10001 11001 10101 10011 10001 10001",
    "O": "01110 10001 10001 10001 10001 10001 01110", "P": "11110 10001 10001 11110 10000 10000 10000",
    "Q": "01110 10001 10001 10001 10101 10010 01101", "R": "11110 10001 10001 11110 10100 10010 10001",
    "S": "01111 10000 10000 01110 00001 00001 11110", "T": "11111 00100 00100 00100 00100 00100 00100",
    "U": "10001 10001 10001 10001 10001 10001 01110", "V": "10001 10001 10001 10001 10001 01010 00100",
    "W": "10001 10001 10001 10101 10101 10101 01010", "X": "10001 10001 01010 00100 01010 10001 10001",
    "Y": "10001 10001 10001 01010 00100 00100 00100", "Z": "11111 00001 00010 00100 01000 10000 11111",
    "0": "01110 10001 10011 10101 11001 10001 01110", "1": "00100 01100 00100 00100 00100 00100 01110",
    "2": "01110 10001 00001 00010 00100 01000 11111", "3": "11111 00010 00100 00010 00001 10001 01110",
    "4": "00010 00110 01010 10010 11111 00010 00010", "5": "11111 10000 11110 00001 00001 10001 01110",
    "6": "00110 01000 10000 11110 10001 10001 01110", "7": "11111 00001 00010 00100 01000 01000 01000",
    "8": "01110 10001 10001 01110 10001 10001 01110", "9": "01110 10001 10001 01111 00001 00010 01100",
    " ": "00000 00000 00000 00000 00000 00000 00000", ".": "00000 00000 00000 00000 00000 01100 01100",
    "-": "00000 00000 00000 11111 00000 00000 00000", "_": "00000 00000 00000 00000 00000 00000 11111",
    ":": "00000 01100 01100 00000 01100 01100 00000", "/": "00000 00001 00010 00100 01000 10000 00000",
    "(": "00010 00100 01000 01000 01000 00100 00010", ")": "01000 00100 00010 00010 00010 00100 01000",
    "%": "11000 11001 00010 00100 01000 10011 00011", ",": "00000 00000 00000 00000 01100 00100 01000",
    "+": "00000 00100 00100 11111 00100 00100 00000", "=": "00000 00000 11111 00000 11111 00000 00000",
    "[": "01110 01000 01000 01000 01000 01000 01110", "]": "01110 00010 00010 00010 00010 00010 01110",
    "#": "01010 01010 11111 01010 11111 01010 01010", "!": "00100 00100 00100 00100 00100 00000 00100",
    "?": "01110 10001 00001 00010 00100 00000 00100", "*": "00000 00100 10101 01110 10101 00100 00000",
    "'": "01100 00100 01000 00000 00000 00000 00000", ">": "01000 00100 00010 00001 00010 00100 01000",
    "<": "00010 00100 01000 10000 01000 00100 00010", ";": "00000 01100 01100 00000 01100 00100 01000",
}
FONT: dict[str, list[tuple[int, int]]] = {
    ch: [(x, y) for y, row in enumerate(rows.split()) for x, bit in enumerate(row) if bit == "1"]
    for ch, rows in _FONT_ROWS.items()
}
GLYPH_W, GLYPH_H, ADVANCE = 5, 7, 6


class Canvas:
    """An RGB raster with the few primitives the map needs."""

    def __init__(self, width: int, height: int, background: tuple[int, int, int] = (255, 255, 255)) -> None:
        self.width, self.height = width, height
        self.buf = bytearray(bytes(background) * (width * height))

    def rect(self, x: int, y: int, w: int, h: int, colour: tuple[int, int, int]) -> None:
        x0, y0 = max(0, x), max(0, y)
        x1, y1 = min(self.width, x + w), min(self.height, y + h)
        if x1 <= x0 or y1 <= y0:
            return
        span = bytes(colour) * (x1 - x0)
        for yy in range(y0, y1):
            start = (yy * self.width + x0) * 3
            self.buf[start:start + len(span)] = span

    def pixel(self, x: int, y: int, colour: tuple[int, int, int]) -> None:
        if 0 <= x < self.width and 0 <= y < self.height:
            i = (y * self.width + x) * 3
            self.buf[i:i + 3] = bytes(colour)

    def outline(self, x: int, y: int, w: int, h: int, colour: tuple[int, int, int]) -> None:
        self.rect(x, y, w, 1, colour)
        self.rect(x, y + h - 1, w, 1, colour)
        self.rect(x, y, 1, h, colour)
        self.rect(x + w - 1, y, 1, h, colour)

    def cross(self, x: int, y: int, size: int, colour: tuple[int, int, int]) -> None:
        for i in range(1, size - 1):
            for t in (0, 1):   # two pixels thick
                self.pixel(x + i + t - 1, y + i, colour)
                self.pixel(x + size - 1 - i - t + 1, y + i, colour)

    def text(self, x: int, y: int, s: str, colour: tuple[int, int, int] = (0, 0, 0), scale: int = 1,
             vertical: bool = False) -> None:
        """Upper-cased 5x7 text; ``vertical`` reads bottom-to-top (for column headers), ending at y."""
        for n, ch in enumerate(s.upper()):
            for gx, gy in FONT.get(ch, FONT["?"]):
                if vertical:   # rotate 90 degrees counter-clockwise: glyph x runs up, glyph y runs right
                    px, py = x + gy * scale, y - (n * ADVANCE + gx) * scale
                else:
                    px, py = x + (n * ADVANCE + gx) * scale, y + gy * scale
                self.rect(px, py, scale, scale, colour)

    def png(self) -> bytes:
        raw = bytearray()
        stride = self.width * 3
        for y in range(self.height):
            raw.append(0)
            raw += self.buf[y * stride:(y + 1) * stride]

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        ihdr = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(raw), 9))
                + chunk(b"IEND", b""))


def text_width(s: str, scale: int = 1) -> int:
    return len(s) * ADVANCE * scale


def short_kind(kind: str) -> str:
    """Column header for the PNG: 'experts.gate_proj' -> 'x.gate', 'q_proj' -> 'q'."""
    k = kind.replace("_proj", "").replace("experts.", "x.")
    return k if len(k) <= 14 else k[:6] + ".." + k[-6:]


def render_png(pm: PrecisionMap) -> bytes:
    nrows = len(pm.rows)
    cell = 14 if nrows <= 48 else max(5, 680 // max(1, nrows))
    gap, margin = 24, 12
    label_w = text_width(max(pm.rows, key=len, default="0")) + 6
    head_h = text_width(max((short_kind(c) for c in pm.cols), key=len, default="q")) + 6
    used = sorted({c.category for p in pm.panels for c in p.cells.values()},
                  key=lambda k: list(COLOURS).index(k) if k in COLOURS else 99)
    panel_sizes = []
    for p in pm.panels:
        grid_w = label_w + len(pm.cols) * cell
        title_w = max(text_width(p.title), text_width(p.subtitle))
        panel_sizes.append((max(grid_w, title_w), 30 + head_h + nrows * cell))
    # wrap panels into lines of at most ~1600 px
    lines: list[list[int]] = [[]]
    width = 0
    for i, (w, _) in enumerate(panel_sizes):
        if lines[-1] and width + w > 1600:
            lines.append([])
            width = 0
        lines[-1].append(i)
        width += w + gap
    title = f"MXMIX PRECISION MAP: {Path(pm.checkpoint).name}"
    legend_items = [(COLOURS.get(k, OTHER_COLOUR), LEGEND_LABELS.get(k, k.upper())) for k in used]
    legend_items.append(((255, 255, 255), "X = ENGINE MISREADS CELL"))
    legend_w = sum(16 + text_width(t) + 14 for _, t in legend_items)
    total_w = max([sum(panel_sizes[i][0] for i in line) + gap * (len(line) - 1) for line in lines]
                  + [text_width(title, 2), legend_w]) + 2 * margin
    total_h = margin + 14 * 2 + 8 + sum(max(panel_sizes[i][1] for i in line) + gap for line in lines) + 24 + margin
    cv = Canvas(total_w, total_h)
    cv.text(margin, margin, title, scale=2)
    y = margin + 14 * 2 + 8
    for line in lines:
        x = margin
        for i in line:
            _draw_panel(cv, pm, pm.panels[i], x, y, cell, label_w, head_h)
            x += panel_sizes[i][0] + gap
        y += max(panel_sizes[i][1] for i in line) + gap
    lx = margin
    for colour, label in legend_items:
        cv.rect(lx, y, 12, 12, colour)
        cv.outline(lx, y, 12, 12, (60, 60, 60))
        if label.startswith("X ="):
            cv.cross(lx, y, 12, (0, 0, 0))
        cv.text(lx + 16, y + 3, label)
        lx += 16 + text_width(label) + 14
    return cv.png()


def _draw_panel(cv: Canvas, pm: PrecisionMap, p: Panel, x: int, y: int, cell: int, label_w: int,
                head_h: int) -> None:
    cv.text(x, y, p.title, (0, 0, 0))
    cv.text(x, y + 10, p.subtitle, (90, 90, 90))
    gy = y + 30 + head_h
    for j, col in enumerate(pm.cols):
        cv.text(x + label_w + j * cell + max(0, (cell - GLYPH_H) // 2), gy - 4, short_kind(col), (40, 40, 40),
                vertical=True)
    for i, row in enumerate(pm.rows):
        ry = gy + i * cell
        if cell >= 8 and (len(pm.rows) <= 48 or i % max(1, 10 // max(1, cell // 2)) == 0 or row == TOP_ROW):
            cv.text(x, ry + max(0, (cell - GLYPH_H) // 2), row, (40, 40, 40))
        for j, col in enumerate(pm.cols):
            c = p.cells.get((row, col))
            cx = x + label_w + j * cell
            if c is None:
                cv.rect(cx, ry, cell - 1, cell - 1, EMPTY)
                continue
            cv.rect(cx, ry, cell - 1, cell - 1, COLOURS.get(c.category, OTHER_COLOUR))
            if c.flagged:
                cv.cross(cx, ry, cell - 1, (0, 0, 0))


# ---- HTML -----------------------------------------------------------------------------------------

def _hex(c: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*c)


def _svg_panel(pm: PrecisionMap, p: Panel) -> str:
    cell = 16
    label_w = 8 * max((len(r) for r in pm.rows), default=1) + 10
    head_h = 7 * max((len(c) for c in pm.cols), default=1) + 10
    w = label_w + cell * len(pm.cols) + 4
    h = head_h + cell * len(pm.rows) + 4
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" '
             f'aria-label="{html.escape(p.title)}">']
    for j, col in enumerate(pm.cols):
        cx = label_w + j * cell + cell / 2 + 4
        parts.append(f'<text x="{cx}" y="{head_h - 4}" transform="rotate(-90 {cx} {head_h - 4})" '
                     f'class="col">{html.escape(col)}</text>')
    for i, row in enumerate(pm.rows):
        y = head_h + i * cell
        parts.append(f'<text x="{label_w - 6}" y="{y + cell - 4}" class="row">{html.escape(row)}</text>')
        for j, col in enumerate(pm.cols):
            c = p.cells.get((row, col))
            x = label_w + j * cell
            if c is None:
                parts.append(f'<rect x="{x}" y="{y}" width="{cell - 1}" height="{cell - 1}" fill="{_hex(EMPTY)}"/>')
                continue
            tip = html.escape(f"layer {row}, {col}: " + "; ".join(c.tip)) if row != TOP_ROW else html.escape("; ".join(c.tip))
            fill = _hex(COLOURS.get(c.category, OTHER_COLOUR))
            parts.append(f'<g><title>{tip}</title><rect x="{x}" y="{y}" width="{cell - 1}" height="{cell - 1}" '
                         f'fill="{fill}"/>')
            if c.flagged:
                parts.append(f'<path d="M{x + 2} {y + 2}L{x + cell - 3} {y + cell - 3}M{x + cell - 3} {y + 2}'
                             f'L{x + 2} {y + cell - 3}" stroke="#000" stroke-width="2"/>')
            parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)


def render_html(pm: PrecisionMap) -> str:
    used = sorted({c.category for p in pm.panels for c in p.cells.values()},
                  key=lambda k: list(COLOURS).index(k) if k in COLOURS else 99)
    legend = "".join(
        f'<span class="key"><span class="sw" style="background:{_hex(COLOURS.get(k, OTHER_COLOUR))}"></span>'
        f"{html.escape(LEGEND_LABELS.get(k, k))}</span>" for k in used)
    legend += '<span class="key"><span class="sw x">&#x2715;</span>engine misreads a module in this cell</span>'
    panels = "".join(
        f'<figure class="panel"><figcaption><b>{html.escape(p.title)}</b><br><small>{html.escape(p.subtitle)}'
        f"</small></figcaption>{_svg_panel(pm, p)}</figure>" for p in pm.panels)
    rows = "".join(
        f'<tr class="{f.severity}"><td>{f.severity}</td><td>{html.escape(f.check)}'
        f'{"/" + html.escape(f.engine) if f.engine else ""}</td><td><code>{html.escape(f.code)}</code><br>'
        f"{html.escape(f.message)}<br><i>{html.escape(f.consequence)}</i></td>"
        f'<td>{len(f.modules)} {f.subject}(s)<br><code>{"<br>".join(html.escape(g) for g in f.groups[:8])}'
        f'{"<br>…" if len(f.groups) > 8 else ""}</code></td></tr>'
        for f in pm.findings)
    findings = (f"<table><tr><th>severity</th><th>check</th><th>finding</th><th>where</th></tr>{rows}</table>"
                if rows else "<p>No findings.</p>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>mxmix precision map: {html.escape(Path(pm.checkpoint).name)}</title>
<style>
body{{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#222}}
h1{{font-size:20px}} .panels{{display:flex;flex-wrap:wrap;gap:28px;align-items:flex-start}}
figure.panel{{margin:0}} figcaption{{font-size:13px;margin-bottom:4px}}
svg text{{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:11px;fill:#333}}
svg text.row{{text-anchor:end}} svg g:hover rect{{stroke:#000;stroke-width:1.5}}
.legend{{margin:12px 0 20px}} .key{{margin-right:18px;font-size:13px;white-space:nowrap}}
.sw{{display:inline-block;width:13px;height:13px;vertical-align:-2px;margin-right:5px;border:1px solid #555}}
.sw.x{{border:1px solid #555;font-size:11px;line-height:13px;text-align:center}}
table{{border-collapse:collapse;font-size:13px;margin-top:24px}} td,th{{border:1px solid #ccc;padding:4px 8px;
vertical-align:top;text-align:left}} tr.error td:first-child{{color:#b00;font-weight:bold}}
tr.warning td:first-child{{color:#a60}} code{{font-size:12px}}
</style></head><body>
<h1>Precision map: {html.escape(pm.checkpoint)}</h1>
<p>Rows: decoder layers ({html.escape(TOP_ROW)} = modules outside the layers). Columns: module kinds.
The first panel shows what is stored; each further panel shows what one engine reading would run, only
for readings that disagree with the tensors. Hover a cell for its modules.</p>
<div class="legend">{legend}</div>
<div class="panels">{panels}</div>
<h2>Findings</h2>
{findings}
</body></html>
"""


def write_report(result: Any, dest: str | Path, *, force: bool = False) -> Path:
    """Write ``dest`` (.html or .png) atomically."""
    dest = Path(dest)
    pm = build_map(result)
    data = render_png(pm) if dest.suffix.lower() == ".png" else render_html(pm).encode("utf-8")
    with atomic_output_file(dest, force=force) as tmp:   # applies the umask (mkstemp alone gives 0600)
        tmp.write_bytes(data)
    return dest
