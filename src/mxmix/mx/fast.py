"""Vectorised torch codec (CPU, or any device torch runs on): equal to the reference bit for bit.

Blocks are contiguous runs of ``block_size`` elements once the tensor is viewed as [rows, K] with K a
multiple of the block size, so the whole tensor is one stream of blocks. On CPU it is cut into one
contiguous range per torch thread; each range runs in its own Python thread with single-threaded torch
ops (torch releases the GIL inside ops), in chunks of 256K elements with reused scratch buffers, so
every intermediate stays in cache, only the input and output touch memory, and no op waits on a
fork/join barrier (which costs a whole scheduler slice when another process holds the other core).

Quantize, per chunk:
  |x| bits (and 0x7FFF / 0x7FFFFFFF) → block max of the integer bits (same order as the magnitudes)
  → scale byte and inverse power of two (table lookup for bf16, integer ops for fp32)
  → x * 2^-s (exact: power-of-two scaling; only results below 2^-126 round, and those are 0 in e4m3)
  → clamp to ±448 (FLOOR only; RCEIL never exceeds 448) → torch's float8_e4m3fn cast (RNE).
bfloat16 input is scaled in bfloat16 (exact), float16 input is widened to float32 first (its range
cannot hold the scales), float32 stays float32. Blocks holding NaN/Inf are rewritten to 0x7F at the end.

Dequantize, per chunk: a 256-entry table gather of the E4M3 values (several times faster on CPU than
torch's float8 → float conversion), times the block's power of two.
"""

from __future__ import annotations

import ctypes
import functools
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

from mxmix.mx.e8m0 import bf16_tables, inverse_scale_from_bytes, scale_bytes_from_abs_bits, scale_from_bytes
from mxmix.mx.formats import E4M3_MAX, E4M3_NAN_BYTE, E8M0_NAN

CHUNK_ELEMENTS = 1 << 18
"""Elements per chunk on CPU: 256K bf16 (512 KB) plus scratch stays in the per-core L2 / shared L3."""


_HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14


@functools.cache
def _madvise() -> Callable[[int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def _hint_huge_pages(t: torch.Tensor) -> None:
    """Best effort: ask Linux to back a fresh, large CPU output with transparent huge pages.

    Large outputs are fresh mmap'd memory, and on virtual machines first-touch 4 KB page faults cost
    about as much as the conversion itself; with the hint, one fault maps 2 MB (what torch's own opt-in
    THP_MEM_ALLOC_ENABLE does). Only the whole 2 MB pages inside the tensor's own buffer are advised;
    failure changes nothing.
    """
    madvise = _madvise()
    if madvise is None or t.device.type != "cpu" or t.nbytes < 4 * _HUGE_PAGE:
        return
    addr = t.data_ptr()
    start = -(-addr // _HUGE_PAGE) * _HUGE_PAGE
    end = (addr + t.nbytes) // _HUGE_PAGE * _HUGE_PAGE
    if end > start:
        madvise(start, end - start, _MADV_HUGEPAGE)


def _as_blocks(x: torch.Tensor, block_size: int) -> tuple[torch.Tensor, int]:
    """x viewed as a contiguous [rows, K_padded] tensor (zero-padded copy only when K % block_size)."""
    k = x.shape[-1]
    x2 = x.reshape(-1, k)
    padded = -(-k // block_size) * block_size
    if padded != k:
        x2 = torch.nn.functional.pad(x2, (0, padded - k))  # zeros never change a block's amax
    return x2.contiguous(), padded


def _chunk_elements(device: torch.device, total: int, block_size: int) -> int:
    """Elements per chunk: a whole number of blocks, at most ``total`` (a multiple of ``block_size``)."""
    if device.type != "cpu":
        return total  # one pass on accelerators: launches, not caches, are the cost there
    return min(total, max(block_size, CHUNK_ELEMENTS // block_size * block_size))


def _run_ranges(device: torch.device, total: int, chunk: int, work: Callable[[int, int], None]) -> None:
    """Call ``work(start, end)`` on chunk-aligned ranges covering [0, total): one range per torch thread
    on CPU, each in its own Python thread running single-threaded torch ops; one call elsewhere."""
    n_chunks = -(-total // chunk) if total else 0
    caller_threads = torch.get_num_threads()
    # Only the main thread fans out: torch's thread settings are process-wide state, and changing them
    # from threads of a threaded caller (a server's request handlers) raced with those threads' own
    # torch work and aborted the process ("terminate called without an active exception").
    fan_out = device.type == "cpu" and threading.current_thread() is threading.main_thread()
    workers = min(caller_threads, n_chunks) if fan_out else 1
    if workers <= 1:
        work(0, total)
        return
    per = -(-n_chunks // workers) * chunk
    ranges = [(s, min(total, s + per)) for s in range(0, total, per)]

    def run(bounds: tuple[int, int]) -> None:
        torch.set_num_threads(1)  # this thread's own OpenMP setting; the caller's is untouched
        work(*bounds)

    try:
        with ThreadPoolExecutor(max_workers=len(ranges), thread_name_prefix="mxmix-codec") as pool:
            for future in [pool.submit(run, r) for r in ranges]:
                future.result()
    finally:
        # torch also keeps the last requested count process-wide for threads started later: put the
        # caller's back so our workers' setting does not leak into them
        torch.set_num_threads(caller_threads)


def quantize(x: torch.Tensor, block_size: int = 32, scale_mode: str = "rceil") -> tuple[torch.Tensor, torch.Tensor]:
    """MXFP8-quantize ``x`` (validated by the caller) with torch ops; blocks along the last dim."""
    k = x.shape[-1]
    n_blocks_row = -(-k // block_size)
    x2, padded = _as_blocks(x, block_size)
    flat = x2.view(-1)
    total = flat.numel()
    device = x.device
    q = torch.empty(total, dtype=torch.float8_e4m3fn, device=device)
    _hint_huge_pages(q)
    sbytes = torch.empty(total // block_size, dtype=torch.uint8, device=device)
    chunk = _chunk_elements(device, total, block_size)
    is_bf16 = x.dtype == torch.bfloat16
    work_dtype = torch.bfloat16 if is_bf16 else torch.float32
    bits_dtype = torch.int16 if is_bf16 else torch.int32
    abs_mask = 0x7FFF if is_bf16 else 0x7FFFFFFF
    if is_bf16:
        byte_table, inv_table = (t.to(device) for t in bf16_tables(scale_mode))

    def work(lo: int, hi: int) -> None:
        size = min(chunk, hi - lo)
        # block maxima are taken on int32 even for bf16 (the and writes widened results): torch's int16
        # max-reduction is ~5× slower than the int32 one
        abs_bits = torch.empty(size, dtype=torch.int32, device=device)
        block_max = torch.empty(size // block_size, dtype=torch.int32, device=device)
        scaled = torch.empty(size, dtype=work_dtype, device=device)
        widened = torch.empty(size, dtype=torch.float32, device=device) if x.dtype == torch.float16 else None
        for start in range(lo, hi, chunk):
            n = min(chunk, hi - start)
            nb = n // block_size
            b0 = start // block_size
            src = flat[start:start + n]
            if widened is not None:
                src = widened[:n].copy_(src)
            torch.bitwise_and(src.view(bits_dtype), abs_mask, out=abs_bits[:n])
            torch.amax(abs_bits[:n].view(nb, block_size), dim=1, out=block_max[:nb])
            if is_bf16:
                idx = block_max[:nb]  # the 15-bit |amax| pattern indexes the tables directly
                torch.index_select(byte_table, 0, idx, out=sbytes[b0:b0 + nb])
                inv = torch.index_select(inv_table, 0, idx)
            else:
                chunk_bytes = scale_bytes_from_abs_bits(block_max[:nb], scale_mode)
                sbytes[b0:b0 + nb].copy_(chunk_bytes)
                inv = inverse_scale_from_bytes(chunk_bytes)
            out = scaled[:n].view(nb, block_size)
            torch.mul(src.view(nb, block_size), inv.unsqueeze(1), out=out)
            if scale_mode == "floor":
                out.clamp_(-E4M3_MAX, E4M3_MAX)  # FLOOR puts amax in [256, 512)·scale: saturate
            q[start:start + n].copy_(scaled[:n])

    _run_ranges(device, total, chunk, work)
    bad = sbytes == E8M0_NAN
    if bool(bad.any()):
        q.view(torch.uint8).view(-1, block_size)[bad] = E4M3_NAN_BYTE
    q = q.view(-1, padded)
    if padded != k:
        q = q[:, :k].contiguous()
    return q.reshape(x.shape), sbytes.view(*x.shape[:-1], n_blocks_row)


@functools.cache
def _e4m3_table(dtype: torch.dtype) -> torch.Tensor:
    """The value of every float8_e4m3fn byte in ``dtype`` (exact: bf16/fp16/fp32 all hold E4M3 values)."""
    return torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.float8_e4m3fn).to(dtype)


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.bfloat16,
               block_size: int = 32) -> torch.Tensor:
    """e4m3(q) * 2^(b - 127), exact in float32 (and in bfloat16 for bf16 output), rounded once to
    ``dtype``; byte 255 → NaN.

    bf16 output is computed in bf16: the E4M3 value and the power of two are exact there, so the product
    is the exact product rounded once. float16 cannot hold the scales, so it goes through float32.
    """
    k = q.shape[-1]
    n_blocks = scale.shape[-1]
    padded = n_blocks * block_size
    q2 = q.reshape(-1, k).view(torch.uint8)
    if padded != k:
        q2 = torch.nn.functional.pad(q2, (0, padded - k))
    flat = q2.contiguous().view(-1)
    total = flat.numel()
    device = q.device
    work_dtype = torch.bfloat16 if dtype == torch.bfloat16 else torch.float32
    table = _e4m3_table(work_dtype).to(device)
    factor = scale_from_bytes(scale.reshape(-1)).to(work_dtype).unsqueeze(1)
    out = torch.empty(total, dtype=dtype, device=device)
    _hint_huge_pages(out)
    chunk = _chunk_elements(device, total, block_size)

    def work(lo: int, hi: int) -> None:
        size = min(chunk, hi - lo)
        index = torch.empty(size, dtype=torch.int32, device=device)
        staging = torch.empty(size, dtype=work_dtype, device=device) if work_dtype != dtype else None
        for start in range(lo, hi, chunk):
            n = min(chunk, hi - start)
            b0 = start // block_size
            dst = out[start:start + n] if staging is None else staging[:n]
            torch.index_select(table, 0, index[:n].copy_(flat[start:start + n]), out=dst)
            dst.view(-1, block_size).mul_(factor[b0:b0 + n // block_size])
            if staging is not None:
                out[start:start + n].copy_(dst)

    _run_ranges(device, total, chunk, work)
    out = out.view(-1, padded)
    if padded != k:
        out = out[:, :k].contiguous()
    return out.reshape(q.shape)
