"""The ``torch.autograd.Function`` behind :func:`arrayloss._autodiff.custom_vjp`.

Imported by :mod:`._autodiff` only once a PyTorch tensor requires grad (so torch is
already loaded), inside the function that needs it: ``torch.compile`` can trace
such an import but not the definition of a class.
"""

from __future__ import annotations

from typing import Any

import torch

from ._autodiff import Backward, Forward


class AnalyticBackward(torch.autograd.Function):
    """Value from ``forward`` (or ``fused``), gradient from ``backward`` (or the fused gradients).

    Residuals (or fused gradients) are extra, non-differentiable outputs.
    ``setup_context`` saves the primals and residuals with ``ctx.save_for_backward``,
    as ``torch.func`` transforms require; fused gradients are kept on ``ctx`` and
    released by the first backward pass.
    """

    @staticmethod
    def forward(
        forward: Forward, backward: Backward, fused: Forward | None, *primals: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        value, saved = (forward if fused is None else fused)(*primals)
        return (value, *saved)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, ...]) -> None:
        _, backward, fused, *primals = inputs
        ctx.rule_backward = backward
        ctx.num_primals = len(primals)
        ctx.mark_non_differentiable(*output[1:])
        ctx.set_materialize_grads(False)  # no zero gradients for those outputs (logits-sized when fused)
        # Fused gradients stay outside the saved tensors: the backward pass changes them in place.
        ctx.fused_gradients = output[1:] if fused is not None else ()
        ctx.save_for_backward(*primals, *(output[1:] if fused is None else ()))

    @staticmethod
    def backward(ctx: Any, cotangent: torch.Tensor, *_: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        saved = ctx.saved_tensors
        primals, residuals = tuple(saved[: ctx.num_primals]), tuple(saved[ctx.num_primals :])
        gradients, ctx.fused_gradients = ctx.fused_gradients, ()
        if gradients:  # ours: scaled in place and handed over without a copy (a second pass recomputes)
            if not bool(cotangent == 1):  # host tensors (fused runs on CPU only): no device sync
                for gradient in gradients:
                    gradient *= cotangent
            return (None, None, None, *gradients)
        return (None, None, None, *ctx.rule_backward(primals, residuals, cotangent))
