"""Peak memory (and time) of a mean cross entropy plus its backward pass, on PyTorch CPU.

Usage::

    .venv/bin/python benchmarks/memory_backward.py [--rows 4096] [--classes 32000] [--repeats 3] [--threads 1]

Method: every case runs in a fresh Python process. The process creates float32 logits
(``rows x classes``, requiring grad) and int64 labels, does one small warm-up call on
tiny inputs (to load the code paths), and reads its resident-set high-water mark
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``, kept by the kernel). It then runs the
loss and ``backward()`` once on the big inputs and reads the high-water mark again:
the difference is the peak of everything allocated beyond the inputs, the gradient
included. Logits-sized buffers are far above glibc's mmap threshold, so they are
mapped on allocation and returned to the kernel when freed: the high-water mark sees
exactly the buffers alive at the same time. Results are printed in MiB and in units
of one logits-sized array, so ``1.0`` is the gradient alone. Afterwards the same call
is timed (best of ``--repeats``, with ``--threads`` torch threads: one by default, as
OpenMP threads that spin on a shared, busy machine make timings erratic), which does not
affect the memory figure read before.

Cases: ``torch.nn.functional.cross_entropy``; arrayloss with its analytic backward
(the default for tensors that require grad); arrayloss through autograd of the plain
array-API composition (the setting ``analytic_backward=False``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

CASES = ("torch_cross_entropy", "arrayloss_analytic", "arrayloss_composition")


def peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def run_case(case: str, rows: int, classes: int, repeats: int, threads: int) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    import arrayloss as al
    from arrayloss._lib._settings import settings

    torch.set_num_threads(threads)
    analytic = case != "arrayloss_composition"

    def loss(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if case == "torch_cross_entropy":
            return F.cross_entropy(z, y)
        with settings(analytic_backward=analytic):
            return al.sparse_softmax_cross_entropy(z, y, reduction="mean")

    def step(z: torch.Tensor, y: torch.Tensor) -> None:
        z.grad = None
        loss(z, y).backward()

    small = torch.randn(8, 16, requires_grad=True)
    step(small, torch.randint(0, 16, (8,)))  # warm-up: load every code path on tiny inputs
    logits = torch.randn(rows, classes, requires_grad=True)
    labels = torch.randint(0, classes, (rows,))
    before = peak_bytes()
    step(logits, labels)
    extra = peak_bytes() - before
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step(logits, labels)
        times.append(time.perf_counter() - start)
    logits_bytes = logits.numel() * logits.element_size()
    return {"peak_extra_mib": extra / 2**20, "logits_sized": extra / logits_bytes, "seconds": min(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--classes", type=int, default=32000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--case", choices=CASES, help="run one case in this process (used internally)")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.rows, args.classes, args.repeats, args.threads)))
        return
    size = args.rows * args.classes * 4 / 2**20
    print(
        f"logits {args.rows} x {args.classes} float32 = {size:.0f} MiB; mean loss + backward, torch CPU, "
        f"{args.threads} thread(s), load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'case':<24}{'peak extra MiB':>16}{'x logits':>10}{'seconds':>10}")
    for case in CASES:
        command = [sys.executable, __file__, "--case", case, "--rows", str(args.rows)]
        command += [
            "--classes",
            str(args.classes),
            "--repeats",
            str(args.repeats),
            "--threads",
            str(args.threads),
        ]
        result = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
        print(
            f"{case:<24}{result['peak_extra_mib']:>16.0f}{result['logits_sized']:>10.2f}{result['seconds']:>10.3f}"
        )


if __name__ == "__main__":
    main()
