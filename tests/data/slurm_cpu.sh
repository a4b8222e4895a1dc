#!/usr/bin/env bash

#SBATCH -J dask-worker
#SBATCH -n 1
#SBATCH --cpus-per-task=4
#SBATCH --mem=15G
#SBATCH -t 02:00:00
#SBATCH --partition=short
#SBATCH --account=proj-123
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
export MALLOC_MMAP_THRESHOLD_=16777216
PYTHON -m distributed.cli.dask_worker SCHEDULER --name dummy-name --nthreads 1 --memory-limit 3.73GiB --nworkers 4 --nanny --death-timeout 60 --lifetime 110m --lifetime-stagger 5m --interface lo
