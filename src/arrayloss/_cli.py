"""Command line: ``python -m arrayloss`` (or ``arrayloss``).

It runs the seed example, TensorFlow's documented example of ``sequence_loss_by_example``
(four steps of a batch of two), on every installed backend, device and dtype, and prints
the per-example losses, TensorFlow's numbers, the largest difference and the tolerance
that decides "ok"; for a backend that is not installed, the command that installs it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ._sequence import sequence_loss_by_example

# TensorFlow 0.7's tf.nn.seq2seq.sequence_loss_by_example example: four steps, batch of two, three classes.
SEED_LOGITS = [
    [[1.5, 1.5, 1.5], [0.7, 0.9, 0.2]],
    [[0.5, 0.2, 1.7], [0.1, 1.2, 0.5]],
    [[0.7, 0.3, 1.2], [1.1, 0.2, 0.5]],
    [[0.2, 0.4, 0.1], [0.8, 0.8, 0.5]],
]
SEED_LABELS = [[0, 1], [2, 0], [0, 0], [2, 1]]
SEED_WEIGHTS = [[1.0, 1.0]] * 4
SEED_EXPECTED = [0.98991765, 1.05560169]  # printed by TensorFlow (8 significant digits)
# The largest absolute difference from SEED_EXPECTED that counts as agreeing, by dtype.
TOLERANCE = {"float64": 1e-7, "float32": 1e-5}


@dataclass(frozen=True)
class Target:
    """One backend on one device: ``xp`` is its array-API namespace."""

    backend: str
    device_name: str
    xp: ModuleType
    device: Any

    @property
    def dtypes(self) -> list[str]:
        """The float dtypes of the seed (float64, float32) that this device supports."""
        supported = self.xp.__array_namespace_info__().dtypes(device=self.device, kind="real floating")
        return [name for name in TOLERANCE if name in supported]


def _torch_targets() -> Iterator[Target]:
    import array_api_compat.torch as xp
    import torch

    yield Target("torch", "cpu", xp, torch.device("cpu"))
    if torch.cuda.is_available():
        yield Target("torch", "cuda", xp, torch.device("cuda"))


def _strict_targets() -> Iterator[Target]:
    import array_api_strict as xp

    for device in xp.__array_namespace_info__().devices():
        yield Target("array_api_strict", str(device).split("'")[1], xp, device)


def _numpy_targets() -> Iterator[Target]:
    import array_api_compat.numpy as xp

    yield Target("numpy", "cpu", xp, "cpu")


def _cupy_targets() -> Iterator[Target]:
    import array_api_compat.cupy as xp
    import cupy

    yield Target("cupy", f"cuda:{cupy.cuda.Device().id}", xp, cupy.cuda.Device())


def _jax_targets() -> Iterator[Target]:
    import jax
    import jax.numpy as xp

    for device in jax.devices():
        yield Target("jax", str(device), xp, device)


def _dask_targets() -> Iterator[Target]:
    import array_api_compat.dask.array as xp

    yield Target("dask", "cpu", xp, "cpu")


BACKENDS: dict[str, Callable[[], Iterator[Target]]] = {
    "numpy": _numpy_targets,
    "array_api_strict": _strict_targets,
    "torch": _torch_targets,
    "cupy": _cupy_targets,
    "jax": _jax_targets,
    "dask": _dask_targets,
}
_MODULES = {"dask": "dask.array"}
# How to install a backend that is missing: the package's extras (pyproject.toml), or the library itself.
INSTALL = {
    "numpy": "pip install numpy",
    "array_api_strict": "pip install array-api-strict",
    "torch": 'pip install "arrayloss[torch]"',
    "cupy": 'pip install "arrayloss[cupy]"',
    "jax": 'pip install "arrayloss[jax]"',
    "dask": 'pip install "arrayloss[dask]"',
}


def installed(name: str) -> bool:
    try:
        importlib.import_module(_MODULES.get(name, name))
    except ImportError:
        return False
    return True


def check_seed(target: Target, dtype_name: str, stacked: bool) -> list[float]:
    """Run the seed example on ``target`` and return the two per-example losses."""
    xp, device = target.xp, target.device
    dtype = getattr(xp, dtype_name)
    logits = [xp.asarray(step, dtype=dtype, device=device) for step in SEED_LOGITS]
    labels = [xp.asarray(step, dtype=xp.int32, device=device) for step in SEED_LABELS]
    weights = [xp.asarray(step, dtype=dtype, device=device) for step in SEED_WEIGHTS]
    if stacked:
        result = sequence_loss_by_example(
            xp.stack(logits, axis=1), xp.stack(labels, axis=1), xp.stack(weights, axis=1)
        )
    else:
        result = sequence_loss_by_example(logits, labels, weights)
    return [float(result[i]) for i in range(result.shape[0])]


def describe_seed(out: Any) -> None:
    """What the seed example is, and what "ok" means."""
    expected = ", ".join(f"{v:.8f}" for v in SEED_EXPECTED)
    tolerances = ", ".join(f"{tol:.0e} in {name}" for name, tol in TOLERANCE.items())
    print(
        "The seed: TensorFlow's documented example of sequence_loss_by_example, 4 time steps of a batch\n"
        "of 2 sequences over 3 classes, every weight 1. TensorFlow gives the per-example losses\n"
        f"[{expected}]. Each row runs it on one backend, device and dtype, with the steps\n"
        'as a list ("list") or stacked into one [batch, time, classes] array ("stacked"). "ok": every\n'
        f"loss differs from TensorFlow's by at most the tolerance ({tolerances}).\n",
        file=out,
    )


def run_seed(backends: list[str], out: Any) -> int:
    """Print the seed example on each backend; return the number of disagreements."""
    failures = 0
    describe_seed(out)
    header = (
        f"{'backend':<18}{'device':<22}{'dtype':<9}{'form':<9}{'losses':<28}{'max |diff|':<12}"
        f"{'tolerance':<11}"
    )
    print(header + "status", file=out)
    for name in backends:
        if not installed(name):
            dashes = f"{'-':<22}{'-':<9}{'-':<9}{'-':<28}{'-':<12}{'-':<11}"
            print(f"{name:<18}{dashes}not installed: {INSTALL[name]}", file=out)
            continue
        for target in BACKENDS[name]():
            for dtype_name in target.dtypes:
                for form in ("list", "stacked"):
                    losses = check_seed(target, dtype_name, form == "stacked")
                    diff = max(abs(a - b) for a, b in zip(losses, SEED_EXPECTED, strict=True))
                    tolerance = TOLERANCE[dtype_name]
                    ok = diff <= tolerance
                    failures += not ok
                    shown = "[" + ", ".join(f"{v:.8f}" for v in losses) + "]"
                    print(
                        f"{target.backend:<18}{target.device_name:<22}{dtype_name:<9}{form:<9}"
                        f"{shown:<28}{diff:<12.2e}{tolerance:<11.0e}{'ok' if ok else 'MISMATCH'}",
                        file=out,
                    )
    return failures


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="arrayloss",
        description="Run the TensorFlow seed example on every installed array library and device.",
    )
    parser.add_argument(
        "--backend",
        action="append",
        choices=sorted(BACKENDS),
        help="run only this backend (repeatable); default: every installed one",
    )
    args = parser.parse_args(argv)
    if args.backend:
        missing = [name for name in args.backend if not installed(name)]
        if missing:
            parser.error(
                "backend(s) not installed: " + ", ".join(f"{name} ({INSTALL[name]})" for name in missing)
            )
    failures = run_seed(args.backend or list(BACKENDS), sys.stdout)
    if failures:
        print(f"\n{failures} run(s) disagree with TensorFlow's numbers beyond the tolerance", file=sys.stdout)
    else:
        print("\nEvery run agrees with TensorFlow's numbers within the tolerance.", file=sys.stdout)
    return 1 if failures else 0
