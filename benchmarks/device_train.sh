#!/usr/bin/env bash
# One prepared GPU check of the trainers, for a session that is lent a device machine (about 6 minutes
# on an H200, whose image has torch, numpy, scipy, pyyaml and pytest but no cvxpy; none is needed here
# except by the theory references of the in-batch tests, which are left out below).
# From the repository root on that machine:   bash benchmarks/device_train.sh
#   1. the training tests on CUDA: analytic gradients of both kernels (sparse: cuSPARSE SDDMM with
#      repeated negatives) against float64 autograd, and training reaching the theory's geometry;
#   2. the in-batch trainer on CUDA: stacked gradients against float64 autograd of each run, stacked runs
#      against runs alone (tests/test_batch_trainer.py, the sweep end to end left out);
#   3. bench_train.py with each kernel: naive loop vs trainer at the reference shape (target on an
#      H200: >= 300k config-steps/s for the stacked trainer);
#   4. bench_encoders.py: ResNet, 28x28, k = 254 (B = 256), 64 runs stacked against a plain loop
#      (target: >= 3x per run).
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp}
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
python3 -m pytest -q -p no:cacheprovider tests/test_train.py 2>&1 | tee "$OUT/device_tests.log"
python3 -m pytest -q -p no:cacheprovider tests/test_batch_trainer.py -k "not end_to_end" 2>&1 \
  | tee "$OUT/device_tests_batch.log"
for kernel in dense sparse; do
  python3 benchmarks/bench_train.py --runs 512 --steps 50 --repeats 2 --kernel "$kernel" 2>&1 \
    | tee "$OUT/device_bench_$kernel.log"
done
python3 benchmarks/bench_encoders.py --runs 64 --alone 4 --steps 20 --repeats 2 2>&1 | tee "$OUT/device_bench_encoders.log"
