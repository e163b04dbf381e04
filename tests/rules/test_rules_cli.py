"""`mxmix rules match|lint|engines` and `mxmix plan` through the real dispatcher."""

from __future__ import annotations

import json

from mxmix.cli.main import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_match_json_shape(capsys):
    code, out, err = run(capsys, "rules", "match", "--engine", "sglang", "--rule", "model.layers.34.",
                         "model.layers.34.mlp.down_proj", "model.layers.340.mlp.down_proj", "--json")
    assert code == 0 and err == ""
    data = json.loads(out)
    assert [set(d) for d in data] == [{"path", "engine", "decision", "rule", "reason"}] * 2
    assert [d["decision"] for d in data] == ["keep", "quantize"]
    assert data[0]["rule"] == "model.layers.34." and data[1]["rule"] is None


def test_match_rules_file_and_fused(capsys, tmp_path):
    f = tmp_path / "rules.txt"
    f.write_text("# keep attention of layer 0\nmodel.layers.0.attn.wq\nmodel.layers.0.attn.wk\n\n")
    code, out, _ = run(capsys, "rules", "match", "--rules-file", str(f), "--fused", "wqk=wq,wk",
                       "model.layers.0.attn.wqk", "--json")
    assert code == 0 and json.loads(out)[0]["decision"] == "keep"


def test_match_error_decision_exits_nonzero(capsys):
    code, out, _ = run(capsys, "rules", "match", "--rule", "model.layers.0.mlp.gate_proj",
                       "model.layers.0.mlp.gate_up_proj")
    assert code == 1 and "error" in out


def test_match_table_for_people(capsys):
    code, out, _ = run(capsys, "rules", "match", "--rule", "lm_head", "lm_head")
    assert code == 0 and out.splitlines()[0].split()[:3] == ["PATH", "DECISION", "RULE"]


def test_bad_input_is_one_line(capsys, tmp_path):
    for argv in (["rules", "match", "--engine", "nope", "x"],
                 ["rules", "match", "--rule", "re:(", "x"],
                 ["rules", "match", "--rules-file", str(tmp_path / "missing"), "x"],
                 ["rules", "match", "--fused", "broken", "x"],
                 ["rules", "lint"],
                 ["rules", "lint", "--rule", "x", "--modules-from", str(tmp_path / "none")],
                 ["plan", str(tmp_path / "none")],
                 ["plan", str(tmp_path), "--engine", "nope"]):
        code, _out, err = run(capsys, *argv)
        assert code != 0, argv
        assert err.startswith("mxmix: error: ") and err.count("\n") == 1, (argv, err)
        assert "Traceback" not in err


def test_lint_exit_codes(capsys):
    code, out, _ = run(capsys, "rules", "lint", "--rule", "model.layers.3.mlp.down_proj", "--rule", "lm_head")
    assert code == 0 and "no findings" in out
    code, out, _ = run(capsys, "rules", "lint", "--rule", "", "--rule", "gate", "--json")
    data = json.loads(out)
    assert code == 1 and data["errors"] == 1 and data["warnings"] == 1
    assert {f["code"] for f in data["findings"]} == {"empty", "bare-component"}


def test_lint_with_checkpoint_and_engines(capsys, make_synthetic):
    ckpt = make_synthetic(layers=2)
    code, out, _ = run(capsys, "rules", "lint", "--rule", "model.layers.1.", "--rule", "model.layers.9.mlp",
                       "--modules-from", str(ckpt), "--engine", "sglang", "--engine", "vllm", "--json")
    data = json.loads(out)
    found = {(f["code"], f["rule"]) for f in data["findings"]}
    assert ("dead-rule", "model.layers.9.mlp") in found
    assert ("engine-divergence", "model.layers.1.") in found
    assert code == 0 and data["modules"] == 15


def test_engines_lists_all(capsys):
    code, out, _ = run(capsys, "rules", "engines", "--json")
    data = json.loads(out)
    assert code == 0 and len(data) == 15
    assert {"name", "version", "source", "summary", "dialects"} <= set(data[0])
    code, out, _ = run(capsys, "rules", "engines")
    assert "sglang-fp8config" in out and "0.33.0" in out


def test_plan_views(capsys, make_mixed):
    keep = {f"model.layers.2.{p}" for p in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")}
    qc = {"quant_method": "mxfp8", "ignored_layers": ["model.layers.2.self_attn."],
          "modules_to_not_convert": ["model.layers.2.self_attn."]}
    ckpt = make_mixed(keep=keep, quantization_config=qc)
    code, out, _ = run(capsys, "plan", str(ckpt), "--engine", "sglang", "--engine", "sglang-23467")
    assert code == 0
    assert "layers 0-1" in out and "!" in out and "disagreements" in out
    code, out, _ = run(capsys, "plan", str(ckpt), "--engine", "sglang", "--full")
    assert "model.layers.0.self_attn.q_proj" in out
    code, out, _ = run(capsys, "plan", str(ckpt), "--disagreements", "--engine", "sglang-23467")
    body = [line for line in out.splitlines() if line.startswith("model.")]
    assert body and all(line.rstrip().endswith("!") for line in body)
    code, out, _ = run(capsys, "plan", str(ckpt), "--json")
    data = json.loads(out)
    assert data["dialect"] == "sglang" and data["modules"] and "disagreements" in data


def test_plan_compact_view_collapses_experts(capsys, make_mixed):
    ckpt = make_mixed(keep={"lm_head"}, moe="experts", layers=3,
                      quantization_config={"quant_method": "mxfp8", "ignored_layers": ["lm_head"]})
    code, out, _ = run(capsys, "plan", str(ckpt), "--engine", "sglang")
    assert code == 0
    assert "layers 0-2: experts.{0-1}.down_proj" in out
    assert "experts.0." not in out


def test_ranges():
    from mxmix.cli.plan_cmd import _ranges

    assert _ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert _ranges([3]) == "3"
