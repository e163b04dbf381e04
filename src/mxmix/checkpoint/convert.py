"""`mxmix quantize`: stream a BF16 Hugging Face checkpoint into a mixed MXFP8/BF16 one.

Everything that can be checked is checked before the output directory exists (paths, headers, config,
rules, layer counts, name collisions); then every shard is planned from shapes alone and written one
tensor at a time into a temporary sibling of the destination, which is renamed into place only when
complete. Kept tensors are copied byte for byte; quantized ones are read and pushed through
:mod:`mxmix.mx` in row chunks (MX blocks never cross rows), so peak memory is a bounded workspace
whatever the size of the tensors.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mxmix.checkpoint.dialects import DIALECTS, quantization_config_for, scale_tensor_name
from mxmix.checkpoint.layout import INDEX_NAME, Checkpoint, TensorLocation
from mxmix.checkpoint.selection import (
    REASONS,
    ModuleChoice,
    Selection,
    SelectionOptions,
    is_lm_head,
    select_modules,
)
from mxmix.checkpoint.skiplist import STYLES, build_skip_list
from mxmix.checkpoint.writer import OutTensor, ShardPlan, ShardWriter, plan_shards, write_index
from mxmix.errors import MxmixError
from mxmix.fsutil import atomic_output_dir, refuse_existing

BLOCK_SIZE = 32
SCALE_MODES = ("rceil", "floor")
DEVICES = ("cpu", "cuda")
# elements per quantization chunk (32 MB of bf16): bounds the working memory (~100 MB) whatever the
# tensor size; smaller chunks cost speed (more codec calls, each starting its threads)
CHUNK_ELEMENTS = 16 << 20
# never copied from the source: weights in other (pickle / foreign) formats and files we rewrite
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".h5", ".msgpack",
                   ".gguf", ".onnx", ".npz", ".npy")
REWRITTEN = frozenset({"config.json", INDEX_NAME, "hf_quant_config.json", "pytorch_model.bin.index.json",
                       "mxmix-example.json"})


@dataclass
class ConversionSummary:
    """What `quantize_checkpoint` did: per-module decisions, sizes, files; ``to_dict()`` for JSON."""

    source: str
    destination: str
    dialect: str
    scale_mode: str
    skip_list_style: str
    device: str
    modules: list[ModuleChoice]
    skip_list: list[str]
    skip_keys: list[str]
    bytes_before: int
    bytes_after: int
    shards: list[str]
    copied_files: list[str]
    skipped_files: list[str]
    num_layers: int | None
    notes: list[str] = field(default_factory=list)
    nonfinite_blocks: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def quantized(self) -> list[ModuleChoice]:
        return [m for m in self.modules if m.quantize]

    @property
    def kept(self) -> list[ModuleChoice]:
        return [m for m in self.modules if not m.quantize]

    def reason_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for m in self.modules:
            counts[m.reason] = counts.get(m.reason, 0) + 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source, "destination": self.destination, "dialect": self.dialect,
            "scale_mode": self.scale_mode, "skip_list_style": self.skip_list_style, "device": self.device,
            "num_layers": self.num_layers,
            "counts": {"modules": len(self.modules), "quantized": len(self.quantized), "kept": len(self.kept),
                       "by_reason": self.reason_counts()},
            "bytes_before": self.bytes_before, "bytes_after": self.bytes_after,
            "ratio": (self.bytes_after / self.bytes_before) if self.bytes_before else None,
            "shards": self.shards, "copied_files": self.copied_files, "skipped_files": self.skipped_files,
            "skip_list": self.skip_list, "skip_keys": self.skip_keys,
            "nonfinite_blocks": self.nonfinite_blocks, "notes": self.notes,
            "seconds": round(self.seconds, 3),
            "modules": [m.to_dict() for m in self.modules],
        }

    def format_text(self) -> str:
        from mxmix.cli.output import format_table, human_bytes

        lines = [f"{self.source} -> {self.destination}",
                 f"dialect {self.dialect}, scale mode {self.scale_mode}, skip list {self.skip_list_style}, "
                 f"device {self.device}, {self.seconds:.1f} s",
                 f"{len(self.modules)} Linear weights: {len(self.quantized)} MXFP8, {len(self.kept)} kept", ""]
        rows = [(REASONS[r], n) for r, n in sorted(self.reason_counts().items(), key=lambda kv: -kv[1])]
        lines.append(format_table(["decision", "weights"], rows, align="lr"))
        kept_by: dict[str, list[ModuleChoice]] = {}
        for m in self.kept:
            kept_by.setdefault(m.reason, []).append(m)
        if kept_by:
            lines += ["", "kept modules:"]
            for reason, ms in kept_by.items():
                names = describe_modules(ms, self.modules)
                shown = ", ".join(names[:8]) + (f", … (+{len(names) - 8} more; --json lists all)"
                                                 if len(names) > 8 else "")
                lines.append(f"  {reason}: {shown}")
        ratio = f" ({self.bytes_after / self.bytes_before:.2f}x)" if self.bytes_before else ""
        lines += ["", f"size: {human_bytes(self.bytes_before)} -> {human_bytes(self.bytes_after)}{ratio} "
                      f"in {len(self.shards)} shard(s)",
                  f"skip list: {len(self.skip_list)} entries under {', '.join(self.skip_keys)}"]
        if self.copied_files:
            lines.append(f"copied: {', '.join(self.copied_files)}")
        if self.skipped_files:
            lines.append(f"not copied: {', '.join(self.skipped_files)}")
        if self.nonfinite_blocks:
            total = sum(self.nonfinite_blocks.values())
            lines.append(f"warning: {total} blocks with NaN/Inf encoded as NaN (scale byte 255) in "
                         f"{len(self.nonfinite_blocks)} tensor(s): {', '.join(self.nonfinite_blocks)}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def describe_modules(chosen: Sequence[ModuleChoice], all_modules: Sequence[ModuleChoice]) -> list[str]:
    """Short names for a set of modules: whole decoder layers collapse to ``layers 24-29 (all 7)``,
    runs of layers with the same members to ``layers 3-5: mlp.down_proj``; others stay full paths."""
    from mxmix.checkpoint.skiplist import layer_prefix

    per_layer_all: dict[int, int] = {}
    for m in all_modules:
        if m.layer is not None:
            per_layer_all[m.layer] = per_layer_all.get(m.layer, 0) + 1
    members: dict[int, list[str]] = {}
    loose: list[str] = []
    for m in chosen:
        prefix = layer_prefix(m.path, m.layer) if m.layer is not None else None
        name = m.path if not m.stacked else m.weight
        if prefix is None:
            loose.append(name)
        else:
            members.setdefault(m.layer, []).append(name[len(prefix):])
    runs: list[tuple[int, int, tuple[str, ...]]] = []
    for layer in sorted(members):
        key = tuple(members[layer])
        full = len(key) == per_layer_all.get(layer)
        tag = ("*",) if full else key
        if runs and runs[-1][1] == layer - 1 and runs[-1][2] == tag:
            runs[-1] = (runs[-1][0], layer, tag)
        else:
            runs.append((layer, layer, tag))
    out = list(loose)
    for a, b, tag in runs:
        span = f"layer {a}" if a == b else f"layers {a}-{b}"
        out.append(f"{span} (all {per_layer_all[a]})" if tag == ("*",) else f"{span}: {', '.join(tag)}")
    return out


# ---- inputs ---------------------------------------------------------------------------------------

def read_keep_file(path: str | os.PathLike[str]) -> list[str]:
    """Rules from a file: a JSON list (or {"keep": [...]}) or one rule per line, ``#`` comments allowed."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MxmixError(f"--keep-from-file {p}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MxmixError(f"--keep-from-file {p}: cannot read ({exc})") from None
    stripped = text.lstrip()
    if stripped.startswith(("[", "{")):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise MxmixError(f"--keep-from-file {p}: not valid JSON ({exc})") from None
        if isinstance(data, dict):
            data = data.get("keep", data.get("rules"))
        if not isinstance(data, list) or not all(isinstance(r, str) for r in data):
            raise MxmixError(f"--keep-from-file {p}: expected a JSON list of rule strings "
                             f"(or an object with a 'keep' list)")
        return list(data)
    rules = []
    for line in text.splitlines():
        body = line.split(" #", 1)[0] if not line.lstrip().startswith("#") else ""
        body = body.strip()
        if body:
            rules.append(body)
    return rules


def _check_options(scale_mode: str, dialect: str, skip_list_style: str, device: str,
                   max_shard_size: int) -> None:
    if scale_mode not in SCALE_MODES:
        raise MxmixError(f"unknown scale mode {scale_mode!r}; choose one of {', '.join(SCALE_MODES)}")
    if dialect not in DIALECTS:
        raise MxmixError(f"unknown dialect {dialect!r}; choose one of {', '.join(DIALECTS)}")
    if skip_list_style not in STYLES:
        raise MxmixError(f"unknown skip-list style {skip_list_style!r}; choose one of {', '.join(STYLES)}")
    if device.split(":")[0] not in DEVICES:
        raise MxmixError(f"unknown device {device!r}; choose cpu or cuda")
    if isinstance(max_shard_size, bool) or not isinstance(max_shard_size, int) or max_shard_size <= 0:
        raise MxmixError(f"max shard size must be a positive number of bytes, got {max_shard_size!r}")


def _check_paths(src: Path, dst: Path) -> None:
    if not src.exists():
        raise MxmixError(f"{src}: no such directory")
    if not src.is_dir():
        raise MxmixError(f"{src}: not a checkpoint directory (expected config.json and *.safetensors)")
    rs, rd = src.resolve(), dst.resolve()
    if rs == rd:
        raise MxmixError(f"destination {dst} is the source checkpoint; choose another directory")
    if rs in rd.parents:
        raise MxmixError(f"destination {dst} is inside the source checkpoint {src}; choose another directory")
    if rd in rs.parents:
        raise MxmixError(f"destination {dst} contains the source checkpoint {src}; choose another directory")


def _refuse_non_float_weights(ckpt: Checkpoint) -> None:
    """Integer matrices named like weights mean a quantized (or broken) checkpoint, not one to convert."""
    from mxmix.checkpoint.safetensors_header import FLOAT_DTYPES, FP8_DTYPES

    for name, loc in ckpt.tensors.items():
        info = loc.info
        if name.endswith(".weight") and len(info.shape) >= 2 and info.dtype not in FLOAT_DTYPES | FP8_DTYPES:
            raise MxmixError(f"weight {name!r} is {info.dtype}, not a float type: mxmix quantize needs a "
                             f"BF16/FP16/FP32 checkpoint")


def _check_device(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise MxmixError("--device cuda: no CUDA GPU is available here (use --device cpu)")


# ---- planning -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Job:
    """One source tensor and what becomes of it."""

    loc: TensorLocation
    outputs: tuple[OutTensor, ...]
    quantize: bool


def _plan_jobs(ckpt: Checkpoint, selection: Selection, dialect_name: str) -> list[_Job]:
    dialect = DIALECTS[dialect_name]
    to_quantize = {c.weight for c in selection.quantized}
    jobs = []
    names = set(ckpt.tensors)
    locations = sorted(ckpt.tensors.values(), key=lambda loc: (str(loc.shard), loc.info.begin))
    for loc in locations:
        info = loc.info
        if loc.name in to_quantize:
            scale = scale_tensor_name(loc.name, dialect)
            if scale in names:
                raise MxmixError(f"{loc.shard}: tensor {scale!r} already exists; the source already has "
                                 f"scales for {loc.name!r} (is it quantized already?)")
            k = info.shape[-1]
            outputs = (OutTensor(loc.name, "F8_E4M3", info.shape),
                       OutTensor(scale, "U8", (*info.shape[:-1], -(-k // BLOCK_SIZE))))
            jobs.append(_Job(loc, outputs, True))
        else:
            jobs.append(_Job(loc, (OutTensor(loc.name, info.dtype, info.shape),), False))
    return jobs


def _order_by_shard(jobs: list[_Job], plans: list[ShardPlan]) -> list[list[_Job]]:
    by_first = {j.outputs[0].name: j for j in jobs}
    return [[by_first[g[0].name] for g in plan.groups] for plan in plans]


# ---- writing --------------------------------------------------------------------------------------

def _handle(handles: dict[Path, Any], path: Path) -> Any:
    f = handles.get(path)
    if f is None:
        f = handles[path] = open(path, "rb")  # noqa: SIM115 - closed by _write_output
    return f


def _row_chunks(loc: TensorLocation, f: Any, step: int) -> Iterator[tuple[int, Any]]:
    """(first row, [rows, K] tensor) read straight from the file, ``step`` rows at a time."""
    import torch

    from mxmix.checkpoint.safetensors_header import torch_dtype

    info = loc.info
    k = info.shape[-1]
    nrows = info.numel // k
    row_bytes = info.nbytes // nrows
    base = loc.header.data_start + info.begin
    for r0 in range(0, nrows, step):
        n = min(step, nrows - r0)
        buf = bytearray(n * row_bytes)
        f.seek(base + r0 * row_bytes)
        if f.readinto(buf) != len(buf):
            raise MxmixError(f"{loc.shard}: truncated while reading tensor {loc.name!r}")
        yield r0, torch.frombuffer(buf, dtype=torch_dtype(info.dtype)).reshape(n, k)


def _quantize_into(writer: ShardWriter, job: _Job, handles: dict[Path, Any], scale_mode: str, device: str,
                   allow_nonfinite: bool, nonfinite: dict[str, int], advance: Any) -> None:
    """Quantize one weight in row chunks (blocks never cross rows): element bytes go to the shard as they
    come, the small scale tensor follows. Memory: one chunk, whatever the tensor's size."""
    import numpy as np
    import torch

    from mxmix import mx

    loc, name = job.loc, job.loc.name
    shape = loc.info.shape
    scale_out = job.outputs[1]
    step = max(1, CHUNK_ELEMENTS // max(shape[-1], 1))
    # Bookkeeping runs in numpy, not torch: small torch ops right after the codec's threaded calls
    # wait for spinning OpenMP teams (several times slower end to end on 2 cores).
    scales = np.empty((loc.info.numel // shape[-1], scale_out.shape[-1]), dtype=np.uint8)
    writer.begin(name)
    bad_blocks = 0
    for r0, chunk in _row_chunks(loc, _handle(handles, loc.shard), step):
        nbytes = chunk.numel() * chunk.element_size()
        if device != "cpu":
            chunk = chunk.to(device)
        q, s = mx.quantize(chunk, BLOCK_SIZE, scale_mode)
        s_np = s.cpu().numpy()
        if s_np.max(initial=0) == 255:
            if not allow_nonfinite:
                row, col = torch.nonzero(~torch.isfinite(chunk))[0].tolist()
                index = [*divmod(r0 + row, shape[1]), col] if len(shape) == 3 else [r0 + row, col]
                raise MxmixError(f"weight {name!r} contains NaN/Inf (first at index {index}); refusing to "
                                 f"quantize it (--allow-nonfinite encodes such blocks as NaN)")
            bad_blocks += int((s_np == 255).sum())
        writer.write_piece(q.cpu())
        scales[r0:r0 + s_np.shape[0]] = s_np
        advance(nbytes)
    writer.end()
    writer.write_piece_tensor(scale_out.name, scales)
    if bad_blocks:
        nonfinite[name] = bad_blocks


def _copy_into(writer: ShardWriter, job: _Job, handles: dict[Path, Any], advance: Any) -> None:
    loc = job.loc
    writer.copy_range(loc.name, _handle(handles, loc.shard), loc.header.data_start + loc.info.begin,
                      loc.info.nbytes)
    advance(loc.info.nbytes)


def _side_files(src: Path) -> tuple[list[Path], list[str]]:
    """Non-weight files to copy (tokenizer, generation config, chat template, ...) and what is skipped."""
    copy, skipped = [], []
    for p in sorted(src.iterdir()):
        name = p.name
        if name.startswith(".") or name in REWRITTEN:
            continue
        if p.is_dir():
            skipped.append(f"{name}/ (directory)")
        elif name.lower().endswith(WEIGHT_SUFFIXES):
            if not name.endswith(".safetensors"):
                skipped.append(f"{name} (weights in another format)")
        elif p.is_file():
            copy.append(p)
        else:
            skipped.append(f"{name} (not a regular file)")
    return copy, skipped


def _write_output(tmp: Path, plans: list[ShardPlan], ordered: list[list[_Job]],
                  config: dict[str, Any], side: dict[str, Any], copies: list[Path], scale_mode: str,
                  device: str, allow_nonfinite: bool, nonfinite: dict[str, int], bar: Any) -> None:
    from mxmix.checkpoint.safetensors_header import read_header
    handles: dict[Path, Any] = {}
    try:
        for plan, jobs in zip(plans, ordered):
            writer = ShardWriter(tmp, plan)
            try:
                for job in jobs:
                    if job.quantize:
                        _quantize_into(writer, job, handles, scale_mode, device, allow_nonfinite, nonfinite,
                                       bar.update)
                    else:
                        _copy_into(writer, job, handles, bar.update)
                writer.close()
            finally:
                writer.abort()
            read_header(writer.path)  # our own output must pass the strict reader
    finally:
        for f in handles.values():
            f.close()
    if len(plans) > 1:
        write_index(tmp, plans)
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for fname, data in side.items():
        (tmp / fname).write_text(json.dumps(data, indent=2) + "\n")
    for p in copies:
        shutil.copyfile(p, tmp / p.name)


# ---- the entry point ------------------------------------------------------------------------------

def quantize_checkpoint(src: str | os.PathLike[str], dst: str | os.PathLike[str], *,
                        keep: Sequence[str] = (), keep_first: int = 0, keep_last: int = 0,
                        keep_from_file: str | os.PathLike[str] | None = None, scale_mode: str = "rceil",
                        dialect: str = "sglang", skip_list_style: str = "full", device: str = "cpu",
                        max_shard_size: int = 5 * 10**9, force: bool = False, allow_nonfinite: bool = False,
                        progress: bool | None = None, quantize_lm_head: bool = False,
                        quantize_router: bool = False) -> ConversionSummary:
    """Convert the BF16 checkpoint directory ``src`` into a mixed MXFP8/BF16 checkpoint at ``dst``.

    ``keep`` rules (any :mod:`mxmix.rules` kind), ``keep_first`` / ``keep_last`` whole decoder layers and
    ``keep_from_file`` choose BF16 modules; the LM head and MoE routers stay BF16 unless
    ``quantize_lm_head`` / ``quantize_router``. ``progress``: None shows a bar on a terminal only.
    Raises :class:`MxmixError` (nothing written) on bad input.
    """
    start = time.monotonic()
    src_path, dst_path = Path(src), Path(dst)
    if isinstance(keep, str):
        keep = (keep,)
    _check_options(scale_mode, dialect, skip_list_style, device, max_shard_size)
    _check_paths(src_path, dst_path)
    refuse_existing(dst_path, force)
    _check_device(device)
    rules = list(keep) + (read_keep_file(keep_from_file) if keep_from_file is not None else [])

    ckpt = Checkpoint.open(src_path, require_config=True)
    existing = ckpt.quantization_config
    if existing:
        raise MxmixError(f"{src_path}/config.json already has a quantization_config "
                         f"(quant_method {existing.get('quant_method')!r}); mxmix quantize needs an unquantized "
                         f"BF16/FP16/FP32 checkpoint")
    from mxmix.checkpoint.modules import linear_modules

    _refuse_non_float_weights(ckpt)
    modules = linear_modules(ckpt)
    opts = SelectionOptions(tuple(rules), keep_first, keep_last, quantize_lm_head, quantize_router)
    selection = select_modules(modules, ckpt.config, opts)
    jobs = _plan_jobs(ckpt, selection, dialect)
    plans = plan_shards([j.outputs for j in jobs], max_shard_size)
    ordered = _order_by_shard(jobs, plans)

    skip_list = build_skip_list(selection.choices, skip_list_style, ckpt.config)
    dia = DIALECTS[dialect]
    qconfig, side = quantization_config_for(dia, skip_list)
    config = dict(ckpt.config or {})
    config["quantization_config"] = qconfig
    copies, skipped = _side_files(src_path)
    nonfinite: dict[str, int] = {}
    total = sum(j.loc.info.nbytes for j in jobs)

    from mxmix.progress import progress_bar

    bar = progress_bar(total=total, desc="quantize", unit="B", unit_scale=True, enabled=progress)
    try:
        with atomic_output_dir(dst_path, force=force) as tmp:
            _write_output(tmp, plans, ordered, config, side, copies, scale_mode, device,
                          allow_nonfinite, nonfinite, bar)
    finally:
        bar.close()

    notes = list(selection.notes)
    if quantize_lm_head and not any(is_lm_head(c.path) for c in selection.choices):
        notes.append("--quantize-lm-head: this model has no separate lm_head weight (it is tied to the "
                     "embedding, which is never quantized)")
    if not selection.quantized:
        notes.append("no Linear weight was quantized; the output holds the source weights")
    return ConversionSummary(
        source=str(src_path), destination=str(dst_path), dialect=dialect, scale_mode=scale_mode,
        skip_list_style=skip_list_style, device=device, modules=selection.choices, skip_list=skip_list,
        skip_keys=_skip_keys(dia.name), bytes_before=ckpt.total_bytes,
        bytes_after=sum(p.nbytes for p in plans), shards=[p.filename for p in plans],
        copied_files=[p.name for p in copies], skipped_files=skipped, num_layers=selection.num_layers,
        notes=notes, nonfinite_blocks=nonfinite, seconds=time.monotonic() - start)


def _skip_keys(dialect: str) -> list[str]:
    return {"sglang": ["ignored_layers", "modules_to_not_convert"],
            "modelopt": ["quantization.exclude_modules (hf_quant_config.json)", "ignore"],
            "compressed-tensors": ["ignore"]}[dialect]
