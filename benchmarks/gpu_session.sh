#!/bin/bash
# Every accelerator check and benchmark in one run, for a lent GPU session: at most 8 minutes (the
# sum of the timeouts below; each step streams its JSON lines, so a step cut short keeps its rows).
#   bash benchmarks/gpu_session.sh [all|scan|models]
# scan: compiled-kernel tests (both designs of the GPU kernel); scan_roofline.py (the device's copy
# and exp2 ceilings, then every scan implementation against that floor at batch 32, the GPU kernel
# in both designs, "blocks" and "registers"; the kernel and `chunked` at batch 2; then SS2D's
# four-direction scan with the cross-scan fused into the kernel, unfused, and `chunked`);
# scan_gpu.py (kernel agreement with `reference`, forward and forward + backward, batch 32).
# models: whole backbones at 224 px in bf16 with `pallas` (what `auto` picks on GPU) and their
# logit difference to `reference`; SARF's speedup on VMamba-T with `auto`.
# Writes logs and JSON lines to $OUT (or ./gpu_results). Uses the machine's own jax / torch; a
# newer flax can be supplied as a wheel in .whl/ (installed into /tmp/site).
set -uo pipefail
OUT=${OUT:-gpu_results}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" XLA_PYTHON_CLIENT_PREALLOCATE=false
if ls .whl/*.whl >/dev/null 2>&1; then
  timeout 20 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  timeout 20 python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
} 2>&1 | tee "$OUT/env.txt"
part=${1:-all}
if [ "$part" != models ]; then  # at most 275 s
  timeout 50 python3 -m pytest -q -p no:cacheprovider tests/ops/test_scan_pallas.py tests/ops/test_cross_scan.py tests/ops/test_ordered_scan.py \
    tests/ops/test_scan_pallas_gpu_designs.py -k "compiled or resolves_to_the_kernel" 2>&1 | tee "$OUT/pytest.log"
  timeout 95 python3 benchmarks/scan_roofline.py --batch 32 --gpu-designs blocks registers 2>&1 | tee "$OUT/scan_roofline.jsonl"
  timeout 50 python3 benchmarks/scan_roofline.py --batch 2 --impls pallas chunked --gpu-designs blocks registers 2>&1 \
    | tee -a "$OUT/scan_roofline.jsonl"
  timeout 50 python3 benchmarks/scan_roofline.py --ss2d --batch 32 --gpu-designs blocks registers 2>&1 | tee "$OUT/ss2d_roofline.jsonl"
  timeout 30 python3 benchmarks/scan_gpu.py --repeats 10 2>&1 | tee "$OUT/scan_gpu.jsonl"
fi
if [ "$part" != scan ]; then  # at most 165 s
  timeout 105 python3 benchmarks/models.py --models vim_small vmamba_tiny plainmamba_l1 --img-size 224 --in-chans 3 \
    --batch 32 --repeats 3 --dtype bfloat16 --scan-impl pallas --check-against reference 2>&1 | tee "$OUT/models_gpu.jsonl"
  timeout 60 python3 benchmarks/reduction.py --models vmamba_tiny --img-size 224 --in-chans 3 --batch 64 \
    --repeats 5 --schedule hybrid_2p1 2>&1 | tee "$OUT/reduction_gpu.jsonl"
fi
