#!/bin/bash
# Every accelerator check and benchmark in one run, for a lent GPU session (~9 minutes on an H100).
#   bash benchmarks/gpu_session.sh [all|scan|models]
# scan: compiled-kernel tests, scan_gpu.py (batch 32 and 2), reduction.py at 224 px and on the minis.
# models: whole backbones at 224 px in bf16 with `chunked` and with `pallas` (what `auto` picks on
# GPU), with the logit difference between the two, and SARF's speedup on VMamba-T with `auto`.
# Writes logs and JSON lines to $OUT (or ./gpu_results). Uses the machine's own jax / torch; a
# newer flax can be supplied as a wheel in .whl/ (installed into /tmp/site).
set -uo pipefail
OUT=${OUT:-gpu_results}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" XLA_PYTHON_CLIENT_PREALLOCATE=false
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"; } 2>&1 | tee "$OUT/env.txt"
part=${1:-all}
if [ "$part" != models ]; then
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/ops/test_scan_pallas.py \
  -k "compiled_kernel_on_this_accelerator or resolves_to_the_kernel" 2>&1 | tee "$OUT/pytest.log"
timeout 150 python3 benchmarks/scan_gpu.py 2>&1 | tee "$OUT/scan_gpu.jsonl"
timeout 60 python3 benchmarks/scan_gpu.py --batch 2 2>&1 | tee -a "$OUT/scan_gpu.jsonl"
timeout 120 python3 benchmarks/reduction.py --models vmamba_tiny --img-size 224 --in-chans 3 --batch 64 \
  --schedule hybrid_2p1 2>&1 | tee "$OUT/reduction_gpu.jsonl"
timeout 60 python3 benchmarks/reduction.py --batch 256 2>&1 | tee -a "$OUT/reduction_gpu.jsonl"
fi
if [ "$part" != scan ]; then
for impl in chunked pallas; do
  timeout 150 python3 benchmarks/models.py --models vim_small vmamba_tiny plainmamba_l1 --img-size 224 --in-chans 3 \
    --batch 32 --dtype bfloat16 --scan-impl $impl --check-against reference 2>&1 | tee -a "$OUT/models_gpu.jsonl"
done
timeout 100 python3 benchmarks/reduction.py --models vmamba_tiny --img-size 224 --in-chans 3 --batch 64 \
  --schedule hybrid_2p1 --scan-impl pallas 2>&1 | tee -a "$OUT/reduction_gpu.jsonl"
fi
