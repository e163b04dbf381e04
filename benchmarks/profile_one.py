"""Run one MXFP8 matmul shape a few times through the dispatch, for a profiler (Nsight Compute) to catch
(`scripts/gpu_session.sh ncu` runs it under ncu for a few shapes).

    ncu --kernel-name regex:wgmma --launch-skip 2 --launch-count 1 python benchmarks/profile_one.py 8192 8192 1
"""

from __future__ import annotations

import sys

import torch


def main(argv: list[str]) -> int:
    if len(argv) < 3 or not torch.cuda.is_available():
        print("profile_one: usage N K M [REPS], on a CUDA GPU", file=sys.stderr)
        return 2
    n, k, m = (int(a) for a in argv[:3])
    reps = int(argv[3]) if len(argv) > 3 else 5
    from mxmix.mx import quantize
    from mxmix.runtime.kernels import mxfp8_matmul

    w = torch.randn(n, k, device="cuda", dtype=torch.float32).mul_(0.02).to(torch.bfloat16)
    q, s = quantize(w, backend="torch")
    del w
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    for _ in range(reps):
        mxfp8_matmul(x, q, s)
    torch.cuda.synchronize()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
