"""ModelOpt-dialect readings live with their consumers; this module names them in one place.

SGLang's ModelOpt configs (``sglang-modelopt``) combine ``is_layer_skipped`` with
``is_layer_excluded`` (engines/sglang.py); vLLM's (``vllm-modelopt``) run exact, substring and
``fnmatch`` steps (engines/vllm.py). ModelOpt itself ships no consumer of its own that mxmix
mirrors (whether one exists is unverified, engine-semantics.md §6); its producer conventions are
checked by lint (globs cut at a dot).
"""

from __future__ import annotations

from mxmix.rules.engines.sglang import build_sglang_modelopt, modelopt_excluded
from mxmix.rules.engines.vllm import build_vllm_modelopt

MODELOPT_READINGS = ("sglang-modelopt", "vllm-modelopt")

__all__ = ["MODELOPT_READINGS", "build_sglang_modelopt", "build_vllm_modelopt", "modelopt_excluded"]
