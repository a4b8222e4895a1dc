#!/usr/bin/env bash
# One prepared GPU check of the trainer, for a session that is lent a device machine (about 4 minutes
# on an H200, whose image has torch, numpy, scipy, pyyaml and pytest but no cvxpy; none is needed).
# From the repository root on that machine:   bash benchmarks/device_train.sh
#   1. the training tests on CUDA: analytic gradients of both kernels (sparse: cuSPARSE SDDMM with
#      repeated negatives) against float64 autograd, and training reaching the theory's geometry;
#   2. bench_train.py with each kernel: naive loop vs trainer at the reference shape (target on an
#      H200: >= 300k config-steps/s for the stacked trainer).
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp}
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
python3 -m pytest -q -p no:cacheprovider tests/test_train.py 2>&1 | tee "$OUT/device_tests.log"
for kernel in dense sparse; do
  python3 benchmarks/bench_train.py --runs 512 --steps 50 --repeats 2 --kernel "$kernel" 2>&1 \
    | tee "$OUT/device_bench_$kernel.log"
done
