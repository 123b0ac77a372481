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
    """Value from ``forward``, gradient from ``backward``; residuals are extra, non-differentiable outputs.

    ``setup_context`` saves the primals and residuals with ``ctx.save_for_backward``,
    as ``torch.func`` transforms require.
    """

    @staticmethod
    def forward(forward: Forward, backward: Backward, *primals: torch.Tensor) -> tuple[torch.Tensor, ...]:
        value, residuals = forward(*primals)
        return (value, *residuals)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, ...]) -> None:
        _, backward, *primals = inputs
        ctx.rule_backward = backward
        ctx.num_primals = len(primals)
        ctx.mark_non_differentiable(*output[1:])
        ctx.save_for_backward(*primals, *output[1:])

    @staticmethod
    def backward(ctx: Any, cotangent: torch.Tensor, *_: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        saved = ctx.saved_tensors
        primals, residuals = tuple(saved[: ctx.num_primals]), tuple(saved[ctx.num_primals :])
        return (None, None, *ctx.rule_backward(primals, residuals, cotangent))
