#!/usr/bin/env bash

#SBATCH -J dask-worker
#SBATCH -n 1
#SBATCH --cpus-per-task=8
#SBATCH --mem=60G
#SBATCH -t 04:00:00
#SBATCH --gres=gpu:1
#SBATCH --partition='say "hi"'
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
export MALLOC_MMAP_THRESHOLD_=16777216
PYTHON -m distributed.cli.dask_worker SCHEDULER --name dummy-name --nthreads 8 --memory-limit 59.60GiB --nanny --death-timeout 60 --resources GPU=1 --lifetime 230m --lifetime-stagger 10m --interface lo
