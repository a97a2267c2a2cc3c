"""``colsim sweep``: many runs of one base configuration, one dask.distributed task per run.

* :mod:`.plan`   the sweep YAML (base, grid / zip, cluster), the planned runs, the sweep folder and its lock;
* :mod:`.runner` connect to a cluster (local, SLURM via dask-jobqueue, or a running scheduler), submit, gather;
* :mod:`.task`   one run as a task in a worker process (the run folder of :mod:`colsim.rundir`).

The YAML format is documented in :mod:`colsim.sweep.plan` and in the docs' Sweeps guide.
"""
from colsim.sweep.plan import *  # noqa: F401,F403
from colsim.sweep.plan import __all__  # noqa: F401
