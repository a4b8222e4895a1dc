"""The sweep machinery: config -> grid -> tasks -> results -> store, on a dask cluster.

- :mod:`~pipeline.sweep.config`: the YAML sweep config, validated (one line per bad field);
- :mod:`~pipeline.sweep.grid`: the grid of points and its batches;
- :mod:`~pipeline.sweep.tasks`: what a worker computes for a batch;
- :mod:`~pipeline.sweep.results`: the variables a batch writes, and their status codes;
- :mod:`~pipeline.sweep.store`: the zarr store (template, writes, damage checks);
- :mod:`~pipeline.sweep.lock`: one run at a time per store (an ``flock`` that dies with its run);
- :mod:`~pipeline.sweep.graph`: the batches on the cluster, written as they finish;
- :mod:`~pipeline.sweep.cluster`: LocalCluster, SLURM (dask-jobqueue) or a running scheduler;
- :mod:`~pipeline.sweep.estimate`, :mod:`~pipeline.sweep.progress`, :mod:`~pipeline.sweep.faults`:
  the dry run's estimate, progress lines, injected faults for the tests;
- :mod:`~pipeline.sweep.runner`: ``clphase run``, ``--dry-run`` and ``status``.

Importing this package imports none of them (``pipeline.analysis`` reads the status codes without
pulling in dask).
"""
