#!/usr/bin/env bash
# One device call: correctness of new GPU code first, then the issue-5 benchmarks; logs under $OUT.
#   bash scripts/gpu_session.sh STEP...   (default: tests e2e convert; the steps are the case labels below, e.g.
#   alltests table prefilldiag gemmdata ncu wgsweep wgdeep e2e)
# Carries .whl/ (transformers pinned like CI) when present; runs from the repository root.
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=src:/tmp/site || exit 1
fi
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv,noheader
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
steps=${*:-tests e2e convert}
for step in $steps; do
  echo "=== $step $(date +%T)"
  case $step in
    tests) python3 -m pytest -q -x -p no:cacheprovider tests/runtime/test_pointwise_gpu.py \
             "tests/runtime/test_kernels_gpu.py" -k "prmt or pointwise or rotary or rmsnorm or gemma or install" 2>&1 | tee "$OUT/tests.log" | tail -15 ;;
    swabtests) python3 -m pytest -q -x -p no:cacheprovider tests/runtime/test_gluon_decode_gpu.py \
             tests/runtime/test_kernels_gpu.py -k "swab or decode or linear or sibling" 2>&1 | tee "$OUT/swabtests.log" | tail -15 ;;
    swabsweep) python3 benchmarks/bench_kernels.py --sweep-swab --llama --ms 1,2,4,8,16 --json "$OUT/swabsweep.json" 2>&1 \
               | tee "$OUT/swabsweep.log" ;;
    alltests) python3 -m pytest -q -p no:cacheprovider -m gpu tests 2>&1 | tee "$OUT/alltests.log" | tail -15 ;;
    runtimetests) python3 -m pytest -q -p no:cacheprovider -m gpu tests/runtime 2>&1 | tee "$OUT/runtimetests.log" \
               | tail -15 ;;
    e2e) python3 benchmarks/bench_e2e.py --profile --variants "tiles=off,swab=off,wgmma=off" \
           --json "$OUT/e2e.json" 2>&1 | tee "$OUT/e2e.log" | grep -v Warning ;;
    convert) python3 benchmarks/bench_kernels.py --sweep-convert --llama --json "$OUT/convert.json" 2>&1 \
               | tee "$OUT/convert.log" | grep -v "^      " ;;
    table) python3 benchmarks/bench_kernels.py --json "$OUT/table.json" 2>&1 | tee "$OUT/table.log" ;;
    sweepmma) python3 benchmarks/bench_kernels.py --sweep-decode --shapes 4096x4096,8192x8192,28672x8192 --ms 2,4,16 \
               --json "$OUT/sweepmma.json" 2>&1 | tee "$OUT/sweepmma.log" | grep -v "^      " ;;
    convert16) python3 benchmarks/bench_kernels.py --sweep-convert --llama --ms 1,2,4,16 --json "$OUT/convert16.json" 2>&1 \
               | tee "$OUT/convert16.log" | grep -v "^      " ;;
    dequant) python3 -c "import sys; sys.path.insert(0, 'benchmarks'); import bench_kernels as b; \
               b.sweep_dequant([(8192, 8192), (28672, 8192)])" 2>&1 | tee "$OUT/dequant.log" ;;
    prefilldiag) python3 benchmarks/bench_kernels.py --prefill-breakdown --ms 4096 --json "$OUT/prefilldiag.json" 2>&1 \
               | tee "$OUT/prefilldiag.log" ;;
    wgtests) python3 -m pytest -q -x -p no:cacheprovider tests/runtime/test_gluon_wgmma_gpu.py 2>&1 \
               | tee "$OUT/wgtests.log" | tail -15 ;;
    tiletests) python3 -m pytest -q -p no:cacheprovider tests/runtime/test_gluon_wgmma_gpu.py \
               tests/runtime/test_kernels_gpu.py -k "tiled or wgmma or dequantize or linear" 2>&1 \
               | tee "$OUT/tiletests.log" | tail -15 ;;
    wgsweep) python3 benchmarks/bench_kernels.py --sweep-wgmma --ms ${WG_MS:-8,16,32,64,128,256} \
               --json "$OUT/wgsweep.json" 2>&1 | tee "$OUT/wgsweep.log" | grep -v "^    " ;;
    ncu) for shape in ${NCU_SHAPES:-4096,4096,1 8192,8192,1 8192,8192,16}; do
           /usr/local/cuda/bin/ncu --clock-control none --kernel-name regex:${NCU_KERNEL:-wgmma} --launch-skip 2 \
             --launch-count 1 --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy \
             --section LaunchStats --section WarpStateStats --section SchedulerStats \
             python3 benchmarks/profile_one.py ${shape//,/ } 2>&1 | grep -v "^==PROF==" | tee -a "$OUT/ncu.log" \
             | grep -E "Duration|DRAM Throughput|Memory Throughput|Grid Size|Registers|Achieved Occupancy|Theoretical Occ|Stall|Waves|Block Limit|Shared Memory Config|Issued Ipc|No Eligible|L1/TEX Hit|L2 Hit|Dynamic Shared"
         done ;;
    wgtiled) python3 benchmarks/bench_kernels.py --sweep-wgmma --tiled --ms ${WG_MS:-64,128} \
               --json "$OUT/wgtiled.json" 2>&1 | tee "$OUT/wgtiled.log" | grep -v "^    " ;;
    wgdeep) python3 benchmarks/bench_kernels.py --sweep-wgmma --deep --ms ${WG_MS:-1,8,16} \
               --json "$OUT/wgdeep.json" 2>&1 | tee "$OUT/wgdeep.log" | grep -v "^    " ;;
    gemmdata) python3 benchmarks/bench_kernels.py --prefill-breakdown --data-variants --ms 4096 \
               --json "$OUT/gemmdata.json" 2>&1 | tee "$OUT/gemmdata.log" ;;
    prefill) python3 benchmarks/bench_kernels.py --ms 512,4096 --json "$OUT/prefill.json" 2>&1 | tee "$OUT/prefill.log" ;;
  esac
done
echo "=== done $(date +%T)"
