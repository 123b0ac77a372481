"""One rank of ``bench.py``'s ``distributed`` case.

Run as ``python distributed_worker.py RANK WORLD PORT ROWS CLASSES``, by ``bench.py``.

Joins a gloo group on 127.0.0.1, holds its shard of ``ROWS x CLASSES`` float32 logits (the
classes split as evenly as possible), and answers commands read from stdin, one per line:
``run`` (one forward and backward of ``vocab_parallel_cross_entropy``, ``reduction="mean"``;
answers ``ok``), ``peak`` (the same, answering the growth of this process's peak resident
memory during it, in bytes), ``quit``. One PyTorch thread per rank.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from arrayloss.distributed import torch_collectives, vocab_parallel_cross_entropy


def _status(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def main() -> None:
    rank, world, port, rows, classes = (int(a) for a in sys.argv[1:6])
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    start, stop = rank * classes // world, (rank + 1) * classes // world
    generator = torch.Generator().manual_seed(rank)
    local = torch.randn(rows, stop - start, generator=generator).requires_grad_(True)
    labels = torch.randint(0, classes, (rows,), generator=torch.Generator().manual_seed(0))
    collectives = torch_collectives()

    def step() -> None:
        local.grad = None
        loss = vocab_parallel_cross_entropy(
            local, labels, vocab_start=start, collectives=collectives, reduction="mean"
        )
        loss.backward()

    for line in sys.stdin:
        command = line.strip()
        if command == "run":
            step()
            print("ok", flush=True)
        elif command == "peak":
            local.grad = None
            with open("/proc/self/clear_refs", "w") as refs:
                refs.write("5")
            before = _status("VmRSS")
            step()
            print(_status("VmHWM") - before, flush=True)
        elif command == "quit":
            break
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
