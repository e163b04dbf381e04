"""mxmix: mixed-precision MXFP8/BF16 LLM checkpoints — decide, produce, audit, run, verify."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["MxmixError", "__version__", "load"]

from mxmix.errors import MxmixError


def load(checkpoint: Any, *args: Any, **kwargs: Any) -> Any:
    """Load a mixed MXFP8/BF16 checkpoint as a transformers model (see `mxmix.runtime.load`).

    Imported lazily so that `import mxmix` stays cheap for the rule engine and the CLI.
    """
    from mxmix.runtime.load import load as _load

    return _load(checkpoint, *args, **kwargs)
