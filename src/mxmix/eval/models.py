"""Loading models and tokenizers for evaluation: `mxmix.load` for MXFP8/mixed, transformers for plain ones.

Never runs remote code and never reads pickle weights (safetensors only).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mxmix.checkpoint.layout import Checkpoint
from mxmix.errors import MxmixError
from mxmix.hf import quiet_transformers

DTYPES = ("bfloat16", "float16", "float32")


def torch_dtype(name: str) -> Any:
    import torch

    if name not in DTYPES:
        raise MxmixError(f"unknown dtype {name!r} (choose from {', '.join(DTYPES)})")
    return getattr(torch, name)


def check_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MxmixError(f"--device {device}: no CUDA device is available here (use --device cpu)")
    if not (device == "cpu" or device.startswith("cuda")):
        raise MxmixError(f"--device {device!r}: expected cpu, cuda, cuda:N or auto")
    return device


def is_quantized(path: str | os.PathLike[str]) -> bool:
    return bool(Checkpoint.open(path).quantization_config)


def load_model(path: str | os.PathLike[str], device: str = "cpu", dtype: str = "bfloat16") -> Any:
    """An eval-mode causal LM: `mxmix.load` when the checkpoint declares a quantization, else transformers."""
    ckpt = Checkpoint.open(path, require_config=True)
    dt = torch_dtype(dtype)
    device = check_device(device)
    if ckpt.quantization_config:
        from mxmix.runtime.load import load

        with quiet_transformers():
            model = load(str(path), device=device, dtype=dt)
        return model.eval()
    try:
        from transformers import AutoModelForCausalLM
    except ImportError:
        raise MxmixError("loading a plain checkpoint needs transformers: pip install 'mxmix[hf]'") from None
    with quiet_transformers():
        try:
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dt, trust_remote_code=False,
                                                         use_safetensors=True)
        except (OSError, ValueError, KeyError) as exc:
            raise MxmixError(f"{path}: transformers cannot load this checkpoint ({str(exc).splitlines()[0]})") \
                from None
    return model.to(device).eval()


def load_tokenizer(path: str | os.PathLike[str]) -> Any:
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise MxmixError("tokenizing needs transformers: pip install 'mxmix[hf]'") from None
    p = Path(path)
    if not any((p / n).exists() for n in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        raise MxmixError(f"{p}: no tokenizer files (tokenizer.json / tokenizer_config.json) in the checkpoint")
    with quiet_transformers():
        try:
            return AutoTokenizer.from_pretrained(str(p), trust_remote_code=False)
        except (OSError, ValueError) as exc:
            raise MxmixError(f"{p}: cannot load the tokenizer ({str(exc).splitlines()[0]})") from None

