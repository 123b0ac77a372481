"""Where PyTorch's own cross entropy beats the array-API path: the rule of ``arrayloss._lib._torch``.

Usage::

    .venv/bin/python benchmarks/crossover.py [--threads 2] [--repeat 5]

For float32 logits of several sizes (CPU), times a mean sparse cross entropy three ways,
interleaved round by round in one process: arrayloss on its array-API path
(the setting ``delegate_to_torch=False``), arrayloss as shipped (small calls delegated to
PyTorch) and ``torch.nn.functional.cross_entropy``; without gradients (forward) and with
``backward()`` (logits requiring grad, ``.grad`` reset to None before each call, as
``optimizer.zero_grad()`` does). Each figure is the median over ``--repeat`` rounds of
the mean time per call in a loop long enough to last about 20 ms. Prints one table row
per size: the times and ``F / array-API``, the speed-up of the array-API path over
PyTorch (below 1: PyTorch is faster, the call should be delegated).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import arrayloss as al
from arrayloss._lib._settings import settings

SIZES = [(8, 16), (64, 100), (512, 256), (4096, 256), (1024, 1000), (4096, 1000), (4096, 2000), (4096, 4000)]


def per_call(fn: Callable[[], object]) -> float:
    """Mean seconds per call of ``fn`` over a loop of about 20 ms."""
    number = 1
    while True:
        start = time.perf_counter()
        for _ in range(number):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed > 0.02:
            return elapsed / number
        number *= 2 if elapsed > 0.002 else 10


def measure(rows: int, classes: int, grad: bool, repeat: int) -> dict[str, float]:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(rows, classes, generator=generator).requires_grad_(grad)
    labels = torch.randint(0, classes, (rows,), generator=generator)

    def call(loss: Callable[[], torch.Tensor], delegate: bool) -> Callable[[], object]:
        def run() -> object:
            logits.grad = None
            with settings(delegate_to_torch=delegate):
                out = loss()
                if grad:
                    out.backward()
            return out

        return run

    ours = call(lambda: al.sparse_softmax_cross_entropy(logits, labels, reduction="mean"), False)
    shipped = call(lambda: al.sparse_softmax_cross_entropy(logits, labels, reduction="mean"), True)
    theirs = call(lambda: F.cross_entropy(logits, labels), True)
    impls = {"array-API": ours, "shipped": shipped, "F": theirs}
    times: dict[str, list[float]] = {name: [] for name in impls}
    for _ in range(repeat):
        for name, fn in impls.items():
            times[name].append(per_call(fn))
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), float32, median of {args.repeat} rounds")
    columns = ("array-API", "shipped", "F")
    header = f"{'pass':9} {'size':>11} {'MiB':>6} " + " ".join(f"{c:>11}" for c in columns) + "  F/array-API"
    print(header)
    print("-" * len(header))
    for grad in (False, True):
        for rows, classes in SIZES:
            t = measure(rows, classes, grad, args.repeat)
            mib = rows * classes * 4 / 2**20
            print(
                f"{'fwd+bwd' if grad else 'forward':9} {f'{rows}x{classes}':>11} {mib:6.2f} "
                f"{t['array-API'] * 1e6:9.1f}us {t['shipped'] * 1e6:9.1f}us {t['F'] * 1e6:9.1f}us "
                f"{t['F'] / t['array-API']:11.2f}x",
                flush=True,
            )


if __name__ == "__main__":
    main()
