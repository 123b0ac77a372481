"""One rank of ``test_distributed.py``'s gloo test.

Run as ``python distributed_torch_worker.py RANK WORLD PORT OUT``.

Computes the vocab-parallel losses on this rank's shard of the classes (20 and 17 of 37)
with ``loss.backward()``, and saves the values and gradients to ``OUT/rank{RANK}.npz``
(rank 0 also writes the cases to ``OUT/cases.json``); the test compares them with the
single-process loss.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from test_distributed import CLASSES, FEATURES, OPTIONS, ROWS, problem

from arrayloss._lib._settings import settings
from arrayloss.distributed import (
    torch_collectives,
    vocab_parallel_cross_entropy,
    vocab_parallel_linear_cross_entropy,
)


def main() -> None:
    rank, world, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    bounds = (0, 20, CLASSES)
    start, stop = bounds[rank], bounds[rank + 1]
    collectives = torch_collectives()
    saved: dict[str, np.ndarray] = {}
    cases: dict[str, dict[str, str]] = {}
    for case in OPTIONS:
        for reduction in ("none", "sum", "mean"):
            for dtype in ("float64", "float32"):
                # the composition differentiated by autograd too (the all-reduce's backward passes through)
                for analytic in (True, False) if case == "everything" else (True,):
                    name = f"{case}-{reduction}-{dtype}-{'rule' if analytic else 'autograd'}"
                    cases[name] = {"case": case, "reduction": reduction, "dtype": dtype}
                    logits, labels, options = problem(case, seed=7)
                    given = {
                        k: torch.asarray(v) if isinstance(v, np.ndarray) else v for k, v in options.items()
                    }
                    shard = torch.asarray(logits[:, start:stop], dtype=getattr(torch, dtype))
                    shard.requires_grad_(True)
                    with settings(analytic_backward=analytic):
                        value = vocab_parallel_cross_entropy(
                            shard,
                            torch.asarray(labels),
                            vocab_start=start,
                            collectives=collectives,
                            reduction=reduction,
                            **given,
                        )
                        value.sum().backward()
                    saved[f"{name}/value"] = value.detach().double().numpy()
                    saved[f"{name}/grad"] = shard.grad.double().numpy()
    rng = np.random.default_rng(8)
    hidden, weight = rng.normal(size=(ROWS, FEATURES)), rng.normal(size=(CLASSES, FEATURES))
    bias = rng.normal(size=CLASSES)
    _, labels, options = problem("everything", seed=8)
    h = torch.asarray(hidden).requires_grad_(True)
    w = torch.asarray(weight[start:stop]).requires_grad_(True)
    b = torch.asarray(bias[start:stop]).requires_grad_(True)
    given = {k: torch.asarray(v) if isinstance(v, np.ndarray) else v for k, v in options.items()}
    value = vocab_parallel_linear_cross_entropy(
        h, w, torch.asarray(labels), bias=b, vocab_start=start, collectives=collectives, reduction="mean",
        chunk_size=4, **given,
    )  # fmt: skip
    value.backward()
    saved["linear/value"] = value.detach().numpy()
    for key, tensor in (("hidden", h), ("weight", w), ("bias", b)):
        saved[f"linear/{key}"] = tensor.grad.numpy()
    np.savez(out / f"rank{rank}.npz", **saved)
    if rank == 0:
        (out / "cases.json").write_text(json.dumps(cases))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
