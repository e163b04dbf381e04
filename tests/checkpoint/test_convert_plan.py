"""The converter's skip lists as the engines read them (mxmix.rules.plan), and its memory bound."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mxmix.checkpoint.convert import quantize_checkpoint
from mxmix.rules.plan import plan_checkpoint

KEEP = ("model.layers.1.self_attn.q_proj", "model.layers.1.mlp")  # layer 1 next to layers 10 and 11


@pytest.mark.parametrize("moe", [None, "experts", "stacked"])
@pytest.mark.parametrize("dialect", ["sglang", "modelopt", "compressed-tensors"])
def test_full_skip_list_every_engine_agrees(make_synthetic, tmp_path: Path, moe: str | None, dialect: str) -> None:
    src = make_synthetic("src", layers=12, moe=moe, experts=3, hidden=32, intermediate=64, heads=2, kv_heads=1)
    dst = tmp_path / "out"
    s = quantize_checkpoint(src, dst, keep=KEEP, keep_last=1, dialect=dialect)
    assert s.quantized and s.kept
    plan = plan_checkpoint(dst)
    assert plan.dialect == dialect and len(plan.engines) >= 3
    assert plan.disagreements() == dict.fromkeys(plan.engines, 0)
    stored = {r.module.path: r.stored for r in plan.rows}
    assert stored["model.layers.10.self_attn.q_proj"] == "mxfp8"
    assert stored["model.layers.11.self_attn.q_proj"] == "bf16" and stored["model.layers.1.self_attn.k_proj"] == "bf16"


def test_prefix_style_reproduces_the_trailing_dot_failure(make_synthetic, tmp_path: Path) -> None:
    src = make_synthetic("src", layers=4, hidden=32, intermediate=64, heads=2, kv_heads=1)
    dst = tmp_path / "out"
    quantize_checkpoint(src, dst, keep_last=1, skip_list_style="prefix")
    plan = plan_checkpoint(dst)
    assert plan.skip_lists["sglang"] == ["lm_head", "model.layers.3."]
    bad = plan.disagreements()
    assert bad["sglang"] == 0 and bad["transformers"] == 0  # component / regex-prefix matchers read it
    assert bad["sglang-23467"] == 7 and bad["vllm"] == 7  # the trailing dot matches nothing there


def test_peak_memory_is_a_bounded_workspace(tmp_path: Path) -> None:
    """Three 64 MiB weights (one kept, two quantized): peak RSS growth is a bounded workspace, well under
    the issue's limit of twice the largest tensor plus a few hundred MB."""
    script = textwrap.dedent("""
        import json, resource, sys
        from pathlib import Path
        import torch
        from safetensors.torch import save_file
        root = Path(sys.argv[1])
        def make(d, n, rows):
            d.mkdir()
            (d / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"],
                                                        "num_hidden_layers": n}))
            g = torch.Generator().manual_seed(0)
            save_file({f"model.layers.{i}.mlp.down_proj.weight":
                       torch.randn(rows, 4096, generator=g).to(torch.bfloat16) for i in range(n)},
                      str(d / "model.safetensors"))
        make(root / "small", 1, 64)
        make(root / "big", 3, 8192)
        """)
    measure = textwrap.dedent("""
        import json, resource, sys
        from pathlib import Path
        from mxmix.checkpoint.convert import quantize_checkpoint
        root = Path(sys.argv[1])
        quantize_checkpoint(root / "small", root / "small-out")  # imports and codec warm-up
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        quantize_checkpoint(root / "big", root / "big-out", keep_first=1)
        print(json.dumps({"delta": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024}))
        """)
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True)
    out = subprocess.run([sys.executable, "-c", measure, str(tmp_path)], check=True, capture_output=True, text=True)
    delta = json.loads(out.stdout.strip().splitlines()[-1])["delta"]
    largest = 8192 * 4096 * 2
    assert delta < 2 * largest, f"peak RSS grew by {delta / 2**20:.0f} MiB"
