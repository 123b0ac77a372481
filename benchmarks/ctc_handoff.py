"""What separates ``ctc_loss`` on eager PyTorch CPU tensors from ``F.ctc_loss`` (issue 16).

Usage::

    .venv/bin/python benchmarks/ctc_handoff.py [--rounds 100] [--threads 1]

For the bench's CTC inputs (float32, the logits requiring grad, ``.grad`` reset before each
call), times forward + backward of the mean four ways in rounds of shuffled order (so that no
call always follows the same one): ``F.ctc_loss`` of the ``log_softmax`` (time-major), PyTorch's
kernels behind arrayloss's ``log_softmax`` whose backward is the identity without any check,
arrayloss's checks alone, and ``ctc_loss`` as shipped. Each call is timed once per round, right
after another one's kernels, as a training step runs it; the figures are medians. Prints a row
per size: the times and ``F.ctc_loss / ctc_loss``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from bench import _ctc_inputs

import arrayloss as al
from arrayloss._ctc import check_ctc
from arrayloss._lib._torch import LogSoftmaxPassingGradient

SIZES = [(16, 50, 32, 40), (16, 200, 32, 40), (8, 100, 5000, 20)]  # (batch, time, classes, label width)


def measure(sizes: tuple[int, int, int, int], rounds: int) -> dict[str, float]:
    logits, labels, logit_lengths, label_lengths = (torch.asarray(a) for a in _ctc_inputs(*sizes))
    logits.requires_grad_(True)
    lengths = {"logit_lengths": logit_lengths, "label_lengths": label_lengths}

    def theirs() -> None:
        log_probs = torch.log_softmax(logits, -1).transpose(0, 1)
        F.ctc_loss(log_probs, labels, logit_lengths, label_lengths).backward()

    def unchecked() -> None:
        log_probs = LogSoftmaxPassingGradient.apply(logits).transpose(0, 1)
        F.ctc_loss(log_probs, labels, logit_lengths, label_lengths).backward()

    def checks() -> None:
        options = {"blank": 0, "reduction": "mean", "zero_infinity": False, "xp": None}
        check_ctc(logits=logits, labels=labels, **lengths, **options)

    def ours() -> None:
        al.ctc_loss(logits, labels, **lengths, reduction="mean").backward()

    calls: dict[str, Callable[[], None]] = {
        "F.ctc_loss": theirs,
        "kernels, no checks": unchecked,
        "checks alone": checks,
        "ctc_loss": ours,
    }
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in range(rounds + 3):  # three rounds of warm-up
        for name in random.sample(list(calls), len(calls)):
            logits.grad = None
            start = time.perf_counter()
            calls[name]()
            if round_ >= 3:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = ["F.ctc_loss", "kernels, no checks", "checks alone", "ctc_loss"]
    print(f"{'size':<21}" + "".join(f"{name:>20}" for name in names) + "   F / ctc_loss")
    for sizes in SIZES:
        median = measure(sizes, args.rounds)
        cells = "".join(f"{median[name] * 1e3:17.3f} ms" for name in names)
        ratio = median["F.ctc_loss"] / median["ctc_loss"]
        print(f"{'B{} T{} C{} S{}'.format(*sizes):<21}" + cells + f"   {ratio:.3f}x")


if __name__ == "__main__":
    main()
