"""`mxmix audit` from the command line: exit codes, JSON, the precision map (HTML and PNG), real SmolLM2."""

from __future__ import annotations

import json
import re
import struct
import zlib
from pathlib import Path

import pytest

from mxmix.audit import audit_checkpoint
from mxmix.audit.report import COLOURS, FONT, build_map, render_png
from mxmix.checkpoint.convert import quantize_checkpoint
from mxmix.cli.main import main
from mxmix.example.synthetic import SyntheticSpec, write_synthetic_checkpoint

CURRENT = ["sglang", "vllm", "transformers"]


@pytest.fixture(scope="module")
def seed_case(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("seed")
    src = write_synthetic_checkpoint(root / "bf16", SyntheticSpec(layers=6))
    dst = root / "prefix"
    quantize_checkpoint(src, dst, keep_last=2, skip_list_style="prefix", progress=False)
    return dst


def decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """Minimal PNG reader for our own encoder's output (8-bit RGB, filter 0): width, height, rows."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        assert crc == zlib.crc32(kind + body)
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
            assert (depth, colour) == (8, 2)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = zlib.decompress(idat)
    stride = 1 + 3 * width
    assert len(raw) == stride * height
    rows = [raw[y * stride:(y + 1) * stride] for y in range(height)]
    assert all(r[0] == 0 for r in rows)
    return width, height, [r[1:] for r in rows]


def test_exit_codes_and_json(seed_case, capsys):
    assert main(["audit", str(seed_case), "--engine", "sglang"]) == 0
    out = capsys.readouterr().out
    assert "sglang" in out and "clean" in out
    assert main(["audit", str(seed_case), "--engine", "sglang-23467", "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["exit_code"] == 1 and data["summary"]["error"] >= 1
    assert [e["engine"] for e in data["engines"]] == ["sglang-23467"]
    f = next(f for f in data["findings"] if f["code"] == "engine-quantizes-stored-bf16")
    assert f["module_count"] == 14 and f["module_groups"][0].startswith("model.layers.[4-5].")
    assert main(["audit", str(seed_case), "--engine", "nonsense"]) == 2
    assert "unknown engine 'nonsense'" in capsys.readouterr().err


def test_html_report_is_self_contained(seed_case, tmp_path, capsys):
    dest = tmp_path / "map.html"
    assert main(["audit", str(seed_case), "--report", str(dest)]) == 1
    page = dest.read_text()
    assert "<svg" in page and "sglang-23467" in page and "stored tensors" in page
    # nothing fetched: no scripts, stylesheets, images or URLs other than the SVG namespace
    assert not re.search(r"<script|<link|<img|@import|url\(", page)
    assert set(re.findall(r"https?://[^\"' ]+", page)) <= {"http://www.w3.org/2000/svg"}
    # one panel for the stored tensors plus one per engine that misreads it, none for the clean sglang
    assert page.count('<figure class="panel">') == 1 + sum(
        not v.clean for v in audit_checkpoint(seed_case).verdicts)
    assert "<b>sglang 0.5.23</b>" not in page
    # an existing report is not overwritten without --force
    assert main(["audit", str(seed_case), "--report", str(dest)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["audit", str(seed_case), "--report", str(dest), "--force"]) == 1


def test_png_report_colours_match_the_stored_precision(seed_case, tmp_path):
    dest = tmp_path / "map.png"
    assert main(["audit", str(seed_case), "--engine", "sglang-23467", "--report", str(dest)]) == 1
    width, height, rows = decode_png(dest.read_bytes())
    assert 200 < width < 2000 and 100 < height < 1200
    pixels = b"".join(rows)
    counts = {k: pixels.count(bytes(c) * 4) for k, c in COLOURS.items()}
    assert counts["mxfp8"] > 0 and counts["bf16"] > 0 and counts["error"] == 0
    # stored panel: 4 MXFP8 layer rows and 2 BF16 layer rows of 7 kinds each (plus lm_head, BF16)
    pm = build_map(audit_checkpoint(seed_case, engines=["sglang-23467"]))
    stored = pm.panels[0].cells
    assert sum(c.category == "mxfp8" for c in stored.values()) == 28
    assert sum(c.category == "bf16" for c in stored.values()) == 15
    engine = pm.panels[1].cells
    assert sum(c.flagged for c in engine.values()) == 14
    assert render_png(pm) == dest.read_bytes()


def test_bad_report_name(seed_case, tmp_path, capsys):
    assert main(["audit", str(seed_case), "--report", str(tmp_path / "map.pdf")]) == 2
    assert "must end in .html or .png" in capsys.readouterr().err


def test_font_covers_what_the_map_writes():
    text = "MXMIX PRECISION MAP: 0123456789 ABCDEFGHIJKLMNOPQRSTUVWXYZ ._-:/()%,+=[]#!?*'<>;"
    assert set(text) <= set(FONT)
    assert all(len(FONT[c]) > 0 for c in text if c != " ")


@pytest.mark.slow
def test_real_smollm2_mixed_checkpoint_is_clean(smollm2_mixed, capsys):
    result = audit_checkpoint(smollm2_mixed, engines=CURRENT, check_scales=True)
    assert result.exit_code == 0, result.format()
    assert result.scales_checked == 24 * 7
    assert not [f for f in result.findings if f.severity != "info" and f.check != "rules"]
    assert all(v.clean for v in result.verdicts)
    assert main(["audit", str(smollm2_mixed), *[a for e in CURRENT for a in ("--engine", e)]]) == 0
