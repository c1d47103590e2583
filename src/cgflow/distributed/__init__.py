"""cgflow on a dask.distributed cluster: the "dask" energy backend (:mod:`cgflow.systems.molecules.energy.dask_pool`),
connecting to clusters (:mod:`cgflow.distributed.cluster`) and many runs at once (:mod:`cgflow.learning.sweep`).

The submodules import ``distributed`` when they are imported; this package itself imports nothing."""
