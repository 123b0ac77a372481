r"""Cross entropy over a vocabulary sharded across ranks (vocab-parallel, as in Megatron-LM).

When the classes outgrow one device, each rank holds the logits (or the output layer's
rows) of a contiguous range of classes ``[vocab_start, vocab_start + C_local)``. The
loss of every row needs the log-sum-exp over all classes and the label's logit, which
lives on one rank. :func:`vocab_parallel_cross_entropy` and
:func:`vocab_parallel_linear_cross_entropy` compute them from per-row statistics
combined by two all-reduces, never gathering the logits:

1. the row maxima, all-reduced by ``max`` (a constant of differentiation: the shift);
2. the sums of ``exp(z - shift)``, the label's ``z_y - shift`` on the rank that owns the
   label (0 elsewhere), with label smoothing the sums of ``z - shift``, on eager host
   arrays the number of ranks owning the label (the check of the labels reads it), and the
   ranks' class counts, all-reduced together by one ``sum`` (the linear variant all-reduces
   the class count once per call, the rest once per chunk of rows).

Every rank then holds the loss of :func:`arrayloss.sparse_softmax_cross_entropy` on the
full logits. The gradient of the local logits is the local slice of the full gradient,
``softmax - target`` (scaled) from the rows' global statistics kept by the forward pass:
it needs no collective. The linear variant all-reduces the gradient of the replicated
``hidden`` (one ``sum`` of its size) since every rank's shard contributes to it.

The algorithm is written once against the array API. The collectives are an argument:
any object with ``max(x)`` and ``sum(x)`` returning the element-wise all-reduce of an
array over the group (:class:`Collectives`); :func:`torch_collectives` and
:func:`jax_collectives` make one for ``torch.distributed`` and for JAX's named axes
(``shard_map``). The collectives are called only inside the loss's forward pass, whose
analytic gradient PyTorch autograd and JAX (``jax.custom_vjp``) take: autodiff never
differentiates an all-reduce. (:func:`torch_collectives` passes gradients straight through
its ``sum`` anyway, for the paths that differentiate the composition.)

This module imports no array library; the adapters import theirs when called.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

from ._vocab_parallel import Collectives, vocab_parallel_cross_entropy
from ._vocab_parallel_linear import vocab_parallel_linear_cross_entropy

__all__ = [
    "Collectives",
    "jax_collectives",
    "torch_collectives",
    "vocab_parallel_cross_entropy",
    "vocab_parallel_linear_cross_entropy",
]


# --- adapters ------------------------------------------------------------------------------------


class _TorchCollectives:
    """``torch.distributed.all_reduce`` (MAX, SUM) over ``group``; the sum passes gradients through."""

    def __init__(self, group: Any) -> None:
        self.group = group
        self._dist = importlib.import_module("torch.distributed")

    def max(self, x: Any, /) -> Any:
        out = x.detach().clone()  # a constant of differentiation: never a gradient through the maximum
        self._dist.all_reduce(out, op=self._dist.ReduceOp.MAX, group=self.group)
        return out

    def sum(self, x: Any, /) -> Any:
        if x.requires_grad:
            return _pass_through_sum().apply(x, self.group)
        out = x.clone()
        self._dist.all_reduce(out, op=self._dist.ReduceOp.SUM, group=self.group)
        return out


@functools.cache  # one class, made when first needed (torch is imported then)
def _pass_through_sum() -> Any:
    """A ``torch.autograd.Function``: all-reduce SUM forward, the identity backward (not
    ``torch.distributed.nn``'s all-reduce of the gradient, which multiplies a replicated loss's
    gradient by the number of ranks)."""
    function: Any = importlib.import_module("torch.autograd").Function
    dist = importlib.import_module("torch.distributed")

    class PassThroughSum(function):  # type: ignore[misc]
        @staticmethod
        def forward(ctx: Any, x: Any, group: Any) -> Any:
            out = x.clone()
            dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
            return out

        @staticmethod
        def backward(ctx: Any, grad: Any) -> tuple[Any, None]:
            return grad, None

    return PassThroughSum


def torch_collectives(group: Any = None) -> Collectives:
    """:class:`Collectives` of ``torch.distributed`` over ``group`` (None: the default group).

    ``max`` and ``sum`` are ``torch.distributed.all_reduce`` with ``ReduceOp.MAX`` and
    ``ReduceOp.SUM`` on a copy of their argument. The maximum carries no gradient and the
    sum passes the gradient straight through (the loss is replicated on every rank). The
    process group must be initialised (``torch.distributed.init_process_group``): a
    ``RuntimeError`` says so otherwise.

    Examples
    --------
    Run on every rank of an initialised group (not run here)::

        from arrayloss.distributed import torch_collectives, vocab_parallel_cross_entropy

        rank, world = dist.get_rank(), dist.get_world_size()
        local = logits[:, rank * C // world : (rank + 1) * C // world]
        loss = vocab_parallel_cross_entropy(
            local, labels, vocab_start=rank * C // world, collectives=torch_collectives(), reduction="mean"
        )
        loss.backward()
    """
    dist = importlib.import_module("torch.distributed")
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "torch_collectives needs an initialised torch.distributed process group: "
            "call torch.distributed.init_process_group first"
        )
    return _TorchCollectives(group)


class _JaxCollectives:
    """``lax.pmax`` (of ``lax.stop_gradient``) and ``lax.psum`` over a named axis."""

    def __init__(self, axis_name: Any) -> None:
        self.axis_name = axis_name
        self._lax = importlib.import_module("jax.lax")

    def max(self, x: Any, /) -> Any:
        return self._lax.pmax(self._lax.stop_gradient(x), self.axis_name)

    def sum(self, x: Any, /) -> Any:
        return self._lax.psum(x, self.axis_name)


def jax_collectives(axis_name: Any) -> Collectives:
    """:class:`Collectives` over JAX's named mesh axis ``axis_name``, inside ``shard_map``.

    ``max`` is ``lax.pmax`` of ``lax.stop_gradient`` (no gradient), ``sum`` is ``lax.psum``.

    Examples
    --------
    Logits sharded along the classes over a mesh axis ``"vocab"`` (not run here: the package's
    doctests run without JAX; ``conformance/test_distributed.py`` runs it on 8 devices)::

        import jax
        from jax.sharding import PartitionSpec as P
        from arrayloss.distributed import jax_collectives, vocab_parallel_cross_entropy

        def loss(local_logits, labels):
            start = jax.lax.axis_index("vocab") * local_logits.shape[-1]
            shards = jax_collectives("vocab")
            return vocab_parallel_cross_entropy(
                local_logits, labels, vocab_start=start, collectives=shards, reduction="mean"
            )

        mesh = jax.make_mesh((8,), ("vocab",), axis_types=(jax.sharding.AxisType.Explicit,))
        f = jax.jit(jax.shard_map(loss, mesh=mesh, in_specs=(P(None, "vocab"), P()), out_specs=P()))
        sharded = jax.device_put(logits, jax.NamedSharding(mesh, P(None, "vocab")))
        value, grad = jax.value_and_grad(f)(sharded, labels)
    """
    return _JaxCollectives(axis_name)
