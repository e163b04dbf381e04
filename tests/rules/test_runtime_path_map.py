"""``runtime_path_map`` (memoised per parent) against its path-by-path definition."""

from __future__ import annotations

import random

import pytest

from mxmix.rules.plan import runtime_path_map, runtime_path_map_reference

COMPONENTS = ["model", "layers", "0", "7", "34", "340", "mlp", "experts", "experts", "self_attn", "q_proj", "k_proj",
              "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "gate", "qkv_proj", "gate_up_proj", "",
              "²", "3x", "expert", "w1"]


def random_paths(rng: random.Random, n: int) -> list[str]:
    out = []
    parents = [".".join(rng.choice(COMPONENTS) for _ in range(rng.randint(0, 5))) for _ in range(max(1, n // 4))]
    for _ in range(n):
        parent = rng.choice(parents)
        last = rng.choice(COMPONENTS)
        out.append(f"{parent}.{last}" if parent or rng.random() < 0.5 else last)
    # complete fused groups under some parents, so that the fused branch is taken too
    for parent in rng.sample(parents, min(3, len(parents))):
        out += [f"{parent}.{s}" if parent else s for s in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")]
    rng.shuffle(out)
    return out


ADVERSARIAL = [
    [],
    ["q_proj", "k_proj", "v_proj"],                                   # no parent at all
    [".q_proj", ".k_proj", ".v_proj"],                                # empty parent component
    ["experts", "experts.3", "experts.experts", "a.experts.experts", "a.experts.3.experts", "a.experts.3.experts.4"],
    ["m.experts.3", "m.experts.x.3", "m.experts.3.x.experts.y", "m.experts.²", "m.experts.3.gate_proj",
     "m.experts.3.q_proj", "m.experts.3.k_proj", "m.experts.3.v_proj"],
    ["m.experts.x.q_proj", "m.experts.x.k_proj", "m.experts.x.v_proj", "m.experts.x.gate_proj"],
    ["a.q_proj", "a.k_proj", "a.v_proj", "a.q_proj", "b.gate_proj", "b.up_proj", "c.gate_proj"],   # repeats
    ["model.layers.34.mlp.experts.0.down_proj", "model.layers.340.mlp.experts.0.down_proj",
     "model.layers.34.mlp.experts", "model.layers.34.mlp.gate"],
]


@pytest.mark.parametrize("paths", ADVERSARIAL)
def test_adversarial(paths):
    fast = runtime_path_map(paths)
    ref = runtime_path_map_reference(paths)
    assert fast == ref and list(fast) == list(ref)


@pytest.mark.parametrize("seed", range(40))
def test_random(seed):
    paths = random_paths(random.Random(seed), random.Random(seed).randint(1, 400))
    fast = runtime_path_map(paths)
    ref = runtime_path_map_reference(paths)
    assert fast == ref and list(fast) == list(ref)


def test_reference_examples():
    """The reference itself does what the docstring says (so the comparison above means something)."""
    rt = runtime_path_map_reference(["m.experts.3.down_proj", "m.experts.x.down_proj", "a.q_proj", "a.k_proj",
                                     "a.v_proj", "b.gate_proj"])
    assert rt == {"m.experts.3.down_proj": "m.experts", "m.experts.x.down_proj": "m.experts.x.down_proj",
                  "a.q_proj": "a.qkv_proj", "a.k_proj": "a.qkv_proj", "a.v_proj": "a.qkv_proj",
                  "b.gate_proj": "b.gate_proj"}
