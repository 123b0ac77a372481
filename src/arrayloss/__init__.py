"""arrayloss: cross-entropy and sequence losses written once against the Python array API.

Pass NumPy, PyTorch, CuPy, JAX, Dask or array-api-strict arrays and get arrays of
the same library back, on the same device. No array library is imported until
you hand one in.
"""

from ._autodiff import value_and_grad
from ._dense import softmax_cross_entropy
from ._linear import linear_cross_entropy
from ._logsumexp import log_softmax, logsumexp
from ._sequence import sequence_loss, sequence_loss_by_example
from ._sparse import sparse_softmax_cross_entropy

__all__ = [
    "linear_cross_entropy",
    "log_softmax",
    "logsumexp",
    "sequence_loss",
    "sequence_loss_by_example",
    "softmax_cross_entropy",
    "sparse_softmax_cross_entropy",
    "value_and_grad",
]
__version__ = "0.1.0"
