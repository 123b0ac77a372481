"""arrayloss: cross-entropy, sequence, binary and divergence losses written once against the Python array API.

Pass NumPy, PyTorch, CuPy, JAX, Dask or array-api-strict arrays and get arrays of
the same library back, on the same device. No array library is imported until
you hand one in.
"""

from __future__ import annotations

from ._autodiff import value_and_grad
from ._binary import sigmoid_binary_cross_entropy, sigmoid_focal_loss
from ._ctc import ctc_loss
from ._dense import softmax_cross_entropy
from ._divergence import kl_divergence
from ._lib._lazy import lazy_submodules
from ._linear import linear_cross_entropy
from ._logsumexp import log_softmax, logsumexp
from ._sequence import sequence_loss, sequence_loss_by_example
from ._sparse import sparse_softmax_cross_entropy

__all__ = [
    "compat",
    "ctc_loss",
    "distributed",
    "kl_divergence",
    "linear_cross_entropy",
    "log_softmax",
    "logsumexp",
    "sequence_loss",
    "sequence_loss_by_example",
    "sigmoid_binary_cross_entropy",
    "sigmoid_focal_loss",
    "softmax_cross_entropy",
    "sparse_softmax_cross_entropy",
    "value_and_grad",
]
__version__ = "0.1.0"


# ``arrayloss.compat`` and ``arrayloss.distributed`` on first access: no import statement needed.
__getattr__, __dir__ = lazy_submodules(__name__, ("compat", "distributed"), [*__all__, "__version__"])
