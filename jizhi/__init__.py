"""jizhi: the command line, configuration and composition root."""

import os as _os

# jizhi scales with a thread per stage and a process per core; BLAS's own thread pool on top of
# that only spins against them (measured: twice the CPU per request on 2 cores). Set before numpy
# loads for child processes, and applied to an already loaded BLAS too. An explicit
# OPENBLAS_NUM_THREADS in the environment still wins.
_explicit = "OPENBLAS_NUM_THREADS" in _os.environ
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    _os.environ.setdefault(_var, "1")
if not _explicit:
    from threadpoolctl import threadpool_limits as _limits

    _limits(1, user_api="blas")

__version__ = "0.1.0"
