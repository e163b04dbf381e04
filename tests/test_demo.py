"""`mxmix demo`: argument handling and the report renderers (the full run is the end-to-end test's pipeline)."""

from __future__ import annotations

from mxmix.cli.main import main
from mxmix.demo import fidelity_table, format_demo, sizes_table


def test_refuses_an_existing_out_dir(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    out.mkdir()
    assert main(["demo", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_renderers_show_every_row_and_the_next_steps() -> None:
    rows = [{"checkpoint": "all-mxfp8", "reading": "as stored", "kld": 0.0178, "kld_se": 0.0008, "kld_p99": 0.09,
             "same_top": 0.909, "same_top_se": 0.013, "rms_dp": 0.032, "ppl_ratio": 1.0197, "ppl_ratio_unc": 0.0086},
            {"checkpoint": "mixed-last6-prefix", "reading": "sglang-23467", "kld": 0.0178, "kld_se": 0.0008,
             "kld_p99": 0.09, "same_top": 0.909, "same_top_se": 0.013, "rms_dp": 0.032, "ppl_ratio": 1.0197,
             "ppl_ratio_unc": 0.0086}]
    t = fidelity_table(rows)
    assert "0.01780 ± 0.00080" in t and "sglang-23467" in t and "90.90 ± 1.30" in t
    s = sizes_table({"bf16": 200, "all-mxfp8": 100})
    assert "50.0%" in s
    doc = {"out": "/x", "sizes": {"bf16": 200}, "windows": 4, "ctx": 256, "scored_tokens": 508, "fidelity": rows,
           "paired": [{"a": "sglang", "b": "sglang-23467", "difference": 0.0047, "se": 0.0004, "z": 11.7}],
           "audit": {"mixed-last6": {"exit_code": 0}, "mixed-last6-prefix": {"exit_code": 1}},
           "plan_disagreements": {"mixed-last6": {"sglang": 0}, "mixed-last6-prefix": {"sglang-23467": 42}}}
    text = format_demo(doc)
    assert "z = 11.7" in text and "mxmix eval fidelity --reference ./my-model" in text


def test_full_demo_runs_offline_and_writes_its_report(tmp_path, capsys, smollm2_bf16) -> None:
    """The README's main command, end to end (short windows to keep CI fast)."""
    import json

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--ctx", "128", "--windows", "2"]) == 0
    text = capsys.readouterr().out
    assert "mxmix eval fidelity --reference" in text  # ends by saying how to run it on one's own model
    for name in ("report.md", "report.json", "fidelity.json"):
        assert (out / name).is_file(), name
    assert any(p.suffix == ".png" for p in out.rglob("*.png"))
    assert any(p.suffix == ".html" for p in out.rglob("*.html"))
    report = json.loads((out / "report.json").read_text())
    # the engine-safe mixed checkpoint audits clean; the prefix one is flagged for the #23467 reading
    assert report["audit"]["mixed-last6"]["exit_code"] == 0
    assert report["plan_disagreements"]["mixed-last6-prefix"]["sglang-23467"] > 0
    rows = {(r["checkpoint"], r["reading"]): r for r in report["fidelity"]}
    assert rows[("mixed-last6-prefix", "sglang-23467")]["kld"] > rows[("mixed-last6-prefix", "sglang")]["kld"]
