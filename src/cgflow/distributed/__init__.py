"""cgflow on a dask.distributed cluster: the "dask" energy backend (:mod:`cgflow.distributed.dask_energy`),
connecting to clusters (:mod:`cgflow.distributed.cluster`) and many runs at once (:mod:`cgflow.distributed.sweep`).

The submodules import ``distributed`` when they are imported; this package itself imports nothing."""
