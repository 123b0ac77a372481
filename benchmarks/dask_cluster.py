"""Losses on a Dask ``distributed.LocalCluster``: time, bytes spilled to disk, largest task, tasks.

Usage::

    PYTHONPATH=src .venv/bin/python benchmarks/dask_cluster.py [--rows 8192] [--classes 50000]
        [--blocks 2048 10000] [--features 256] [--workers 2] [--memory "4 GiB"] [--threads 1]
        [--cases sparse,sequence,linear] [--repeats 2] [--numpy]

Method: one cluster of ``--workers`` worker processes with ``--memory`` each (Dask's default
thresholds: spilling by the bytes of stored results from 60% of it) runs every case.
Float32 logits ``rows x classes`` in ``--blocks`` (or, for ``linear``, ``hidden`` ``rows x
features`` in row blocks and ``weight`` ``classes x features`` in class blocks) are made by Dask
on the workers and kept there (``persist``), so that no case sends data in its graph. Each case
builds its value and gradient (``arrayloss.value_and_grad``, ``reduction="mean"``;
``sequence_loss`` of one batch of ``rows`` steps; ``linear_cross_entropy`` also its value
alone) and the cluster computes them into blocks kept on the workers (``persist`` and ``wait``:
gathering a gradient into one array is a task of its whole size, which the losses do not
choose). Reported: the best wall time of ``--repeats``, the bytes the workers wrote to disk
(their spill buffers' ``disk-write`` metric) in the slowest repeat, the largest task result
(``nbytes`` reported to the scheduler) and the number of tasks in the graph. ``--numpy``: the
same call on NumPy arrays in this process, for comparison.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from typing import Any

import dask
import dask.array as da
import distributed
import numpy as np
from distributed.diagnostics.plugin import SchedulerPlugin

import arrayloss as al


class LargestTask(SchedulerPlugin):  # type: ignore[misc]
    """The largest result (bytes) of the tasks that finished since the last ``reset``."""

    def __init__(self) -> None:
        self.largest = 0

    def reset(self) -> None:
        self.largest = 0

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if finish == "memory":
            self.largest = max(self.largest, int(kwargs.get("nbytes") or 0))


def disk_written(client: distributed.Client) -> int:
    """Bytes written to disk by every worker's spill buffer so far."""

    def written(dask_worker: Any) -> int:
        return int(dask_worker.data.cumulative_metrics.get(("disk-write", "bytes"), 0))

    return sum(client.run(written).values())


def cases(args: argparse.Namespace, client: distributed.Client) -> dict[str, Callable[[], list[Any]]]:
    rows, classes, (row_block, class_block) = args.rows, args.classes, args.blocks
    rng = da.random.default_rng(0)
    logits = rng.standard_normal((rows, classes), chunks=(row_block, class_block), dtype=np.float32)
    labels = rng.integers(0, classes, size=rows, chunks=row_block)
    hidden = rng.standard_normal((rows, args.features), chunks=(row_block, args.features), dtype=np.float32)
    weight = 0.05 * rng.standard_normal((classes, args.features), chunks=(class_block, args.features))
    weight = weight.astype(np.float32)
    logits, labels, hidden, weight = client.persist([logits, labels, hidden, weight])
    distributed.wait([logits, labels, hidden, weight])

    def sparse() -> list[Any]:
        return list(al.value_and_grad(al.sparse_softmax_cross_entropy)(logits, labels, reduction="mean"))

    def sequence() -> list[Any]:
        return list(al.value_and_grad(al.sequence_loss)(logits[None, ...], labels[None, ...]))

    def linear_value() -> list[Any]:
        return [al.linear_cross_entropy(hidden, weight, labels, reduction="mean")]

    def linear() -> list[Any]:
        value, grads = al.value_and_grad(al.linear_cross_entropy)(hidden, weight, labels, reduction="mean")
        return [value, *grads]

    every = {"sparse": sparse, "sequence": sequence, "linear-value": linear_value, "linear": linear}
    return {name: every[name] for name in args.cases}


def numpy_time(args: argparse.Namespace, name: str) -> float:
    """The best time of the same call on NumPy arrays in this process."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, args.classes, size=args.rows)
    if name.startswith("linear"):
        hidden = rng.standard_normal((args.rows, args.features), dtype=np.float32)
        weight = (0.05 * rng.standard_normal((args.classes, args.features))).astype(np.float32)
        if name == "linear":
            call: Callable[[], Any] = lambda: al.value_and_grad(al.linear_cross_entropy)(  # noqa: E731
                hidden, weight, labels, reduction="mean"
            )
        else:
            call = lambda: al.linear_cross_entropy(hidden, weight, labels, reduction="mean")  # noqa: E731
    else:
        logits = rng.standard_normal((args.rows, args.classes), dtype=np.float32)
        if name == "sparse":
            call = lambda: al.value_and_grad(al.sparse_softmax_cross_entropy)(  # noqa: E731
                logits, labels, reduction="mean"
            )
        else:
            call = lambda: al.value_and_grad(al.sequence_loss)(logits[None, ...], labels[None, ...])  # noqa: E731
    best = float("inf")
    for _ in range(args.repeats):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--classes", type=int, default=50000)
    parser.add_argument("--blocks", type=int, nargs=2, default=(2048, 10000), metavar=("ROWS", "CLASSES"))
    parser.add_argument("--features", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="threads per worker")
    parser.add_argument("--memory", default="4 GiB", help="memory limit per worker")
    parser.add_argument("--cases", type=lambda s: s.split(","), default=["sparse", "sequence", "linear"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--numpy", action="store_true", help="also time the calls on NumPy arrays")
    args = parser.parse_args()

    plugin = LargestTask()
    with (
        distributed.LocalCluster(
            n_workers=args.workers,
            threads_per_worker=args.threads,
            memory_limit=args.memory,
            dashboard_address=":0",
            silence_logs=logging.ERROR,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        cluster.scheduler.add_plugin(plugin)
        print(
            f"{args.rows}x{args.classes} float32 in blocks of {args.blocks[0]}x{args.blocks[1]}, "
            f"features {args.features}; {args.workers} workers x {args.threads} threads, {args.memory} each"
        )
        print(f"{'case':<14}{'tasks':>8}{'best s':>9}{'spilled MB':>12}{'largest task MB':>17}{'numpy s':>9}")
        for name, build in cases(args, client).items():
            outputs = build()
            tasks = len(dask.base.collections_to_expr(outputs).__dask_graph__())
            best, spilled, largest = float("inf"), 0, 0
            for _ in range(args.repeats):
                plugin.reset()
                before = disk_written(client)
                start = time.perf_counter()
                kept = client.persist(build())
                distributed.wait(kept)
                best = min(best, time.perf_counter() - start)
                spilled = max(spilled, disk_written(client) - before)
                largest = max(largest, plugin.largest)
                del kept
            reference = f"{numpy_time(args, name):9.2f}" if args.numpy else f"{'':>9}"
            print(f"{name:<14}{tasks:>8}{best:>9.2f}{spilled / 1e6:>12.0f}{largest / 1e6:>17.1f}{reference}")


if __name__ == "__main__":
    main()
