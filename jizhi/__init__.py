"""jizhi: the command line, configuration and composition root."""

import os as _os

# jizhi scales with threads per stage and processes per core; BLAS's own thread pool on top of
# that only spins against them (measured: 2x the CPU per request on 2 cores). An explicit
# setting in the environment still wins.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    _os.environ.setdefault(_var, "1")

__version__ = "0.1.0"
