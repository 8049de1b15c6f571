"""conure: continual user representation learning (Conure, SIGIR 2021) with compiled kernels."""
from conure import ops, reference
from conure.ops import backend

__version__ = "0.1.0"
__all__ = ["ops", "reference", "backend", "__version__"]
