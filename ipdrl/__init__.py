"""ipdrl: offline RL with planning in learned world models (IPD, DWM-MPC) and fast JAX baselines."""

import os
import sys

# Orthogonal initialisation runs a QR through LAPACK (scipy's OpenBLAS), whose result depends on OpenBLAS's thread
# count: by default one per core, but one in a Dask worker (which sets OMP_NUM_THREADS=1). One thread everywhere
# makes a seed's result the same alone, in a sweep and on a machine with another core count. OpenBLAS reads this
# when it loads, which JAX does at its first linear-algebra call, after this import in every ipdrl command.
_BLAS_THREADS_LATE = "scipy.linalg" in sys.modules and os.environ.get("OPENBLAS_NUM_THREADS") != "1"
os.environ["OPENBLAS_NUM_THREADS"] = "1"
if _BLAS_THREADS_LATE:
    import warnings

    warnings.warn("scipy.linalg was imported before ipdrl, so its OpenBLAS keeps its own thread count and networks "
                  "may initialise differently from `ipdrl train` with the same seed. Import ipdrl first, or set "
                  "OPENBLAS_NUM_THREADS=1 before starting Python.", stacklevel=2)

__version__ = "0.1.0"
