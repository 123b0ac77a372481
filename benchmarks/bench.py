"""The benchmark suite: ``python benchmarks/bench.py [--smoke] [--json PATH] [--plot PATH] [--repeat N]``.

Every case times arrayloss and its peers (``torch.nn.functional.cross_entropy``, the
SciPy idiom ``-take_along_axis(log_softmax(x), y)``, a plain ``sum`` of the logits as
a memory-bandwidth floor, optax on JAX, Liger-Kernel on CUDA) in the same process,
interleaved round by round so that both see the same machine load, and reports the
median time, the speed-up of arrayloss over each peer (peer time / arrayloss time,
above 1 is faster) and the peak memory of one call. Backends that are not installed
are skipped, as is the GPU case without a GPU. ``--smoke`` runs tiny sizes in seconds; the targets,
set for the full sizes, are then reported as not measured at this size (but for cases whose sizes
are the same, as ``small``).

Peak memory is the growth of the process's peak resident memory during one call on
the CPU (``/proc/self/clear_refs``; Linux only, else not reported) and the peak of
the allocator on CUDA (torch) or of CuPy's memory pool.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import arrayloss as al

CASES = (
    "forward",
    "forward_backward",
    "small",
    "sequence",
    "dense",
    "binary",
    "ctc",
    "linear",
    "distributed",
    "sweep",
    "gpu",
    "half",
    "jax",
    "compile",
)
DEFAULT_CASES = tuple(case for case in CASES if case != "compile")  # compile: minutes of compilation


@dataclass
class Bench:
    """One measurement: arrayloss (``ours``) and its peers on the same inputs."""

    case: str
    backend: str
    size: str
    dtype: str
    ours: Callable[[], Any]
    peers: dict[str, Callable[[], Any]]
    targets: dict[str, float] = field(default_factory=dict)  # peer -> least speed-up the issue asks for
    memory: str = "cpu"  # how peak memory is measured: "cpu", "torch-cuda", "cupy", "xla", "ranks" or "none"
    xla_temp: dict[str, int] = field(
        default_factory=dict
    )  # memory "xla": XLA's temp bytes of each compiled impl
    classes: int = 0
    rank_peaks: Callable[[], int] | None = None  # memory "ranks": the largest peak of one call on a rank
    sync: Callable[[], None] = lambda: None
    reset: Callable[[], None] = lambda: None  # before every call: drop what the last call left (gradients)


@dataclass
class Result:
    case: str
    backend: str
    size: str
    dtype: str
    classes: int
    impl: str
    times_s: list[float]
    peak_bytes: int | None
    speedup: float | None = None  # peer time / arrayloss time (arrayloss rows: None)
    target: float | None = None
    at_target_size: bool = True  # measured at the size the target is set for (False: smoke sizes)

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)


def _installed(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def _read_status(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def peak_memory(
    fn: Callable[[], Any], kind: str, sync: Callable[[], None], reset: Callable[[], None]
) -> int | None:
    """Peak memory one call of ``fn`` adds, in bytes (``None`` when it cannot be measured)."""
    reset()
    if kind == "cpu":
        try:
            with open("/proc/self/clear_refs", "w") as refs:  # resets the peak resident size (Linux)
                refs.write("5")
            before = _read_status("VmRSS")
        except OSError:
            return None
        result = fn()
        peak = _read_status("VmHWM") - before
        del result
        return max(peak, 0)
    if kind == "torch-cuda":
        torch = sys.modules["torch"]
        sync()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        result = fn()
        sync()
        del result
        return int(torch.cuda.max_memory_allocated() - before)
    if kind == "cupy":
        cupy = sys.modules["cupy"]
        pool = cupy.get_default_memory_pool()
        sync()
        before = pool.used_bytes()
        result = fn()
        sync()
        peak = pool.total_bytes() - before
        del result
        return int(peak)
    return None


ROUND_SECONDS = 0.02
"""Calls faster than this are timed in loops of about this long (timer and call jitter)."""


def _calls_per_round(fn: Callable[[], Any], bench: Bench) -> int:
    bench.reset()
    start = time.perf_counter()
    fn()
    bench.sync()
    once = time.perf_counter() - start
    return max(1, min(100_000, int(ROUND_SECONDS / max(once, 1e-7))))


def measure(bench: Bench, repeat: int) -> list[Result]:
    """Time arrayloss and its peers, interleaved round by round; then their peak memory.

    A round times one call, or for calls shorter than :data:`ROUND_SECONDS` a loop of
    them, and records the mean time per call (resets between the calls of a loop
    are timed with them: they are only cheap ones, of small cases).
    """
    impls = {"arrayloss": bench.ours, **bench.peers}
    times: dict[str, list[float]] = {name: [] for name in impls}
    for fn in impls.values():  # warm up: first-call costs, allocator, JIT compilation
        bench.reset()
        fn()
        bench.sync()
    calls = {name: _calls_per_round(fn, bench) for name, fn in impls.items()}
    for _ in range(repeat):
        for name, fn in impls.items():
            bench.reset()
            start = time.perf_counter()
            for call in range(calls[name]):
                if call:
                    bench.reset()
                fn()
            bench.sync()
            times[name].append((time.perf_counter() - start) / calls[name])
    if bench.memory == "xla":
        peaks: dict[str, int | None] = {name: bench.xla_temp.get(name) for name in impls}
    elif bench.memory == "ranks":  # arrayloss runs on worker processes; the peers in this one
        peaks = {name: peak_memory(fn, "cpu", bench.sync, bench.reset) for name, fn in bench.peers.items()}
        peaks["arrayloss"] = bench.rank_peaks() if bench.rank_peaks is not None else None
    else:
        peaks = {name: peak_memory(fn, bench.memory, bench.sync, bench.reset) for name, fn in impls.items()}
    ours = statistics.median(times["arrayloss"])
    return [
        Result(
            bench.case,
            bench.backend,
            bench.size,
            bench.dtype,
            bench.classes,
            name,
            times[name],
            peaks[name],
            None if name == "arrayloss" else statistics.median(times[name]) / ours,
            bench.targets.get(name),
        )
        for name in impls
    ]


# ----------------------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Sizes:
    rows: int
    classes: int
    small_rows: int
    small_classes: int
    batch: int
    time: int
    linear_rows: int
    features: int
    sweep: tuple[int, ...]
    gpu_rows: int
    gpu_classes: int
    ctc: tuple[tuple[int, int, int, int], ...]  # (batch, time, classes, label width) of each ctc case


FULL = Sizes(
    4096,
    32000,
    8,
    16,
    16,
    256,
    4096,
    1024,
    (1000, 4000, 16000, 32000, 64000),
    16384,
    131072,
    ((16, 200, 32, 40), (8, 100, 5000, 20)),
)
SMOKE = Sizes(64, 500, 8, 16, 2, 8, 64, 32, (50, 500), 256, 1024, ((2, 10, 5, 3),))

# The fields of Sizes that each case's inputs are made from. The targets are set for the FULL sizes: a
# case run at other sizes (--smoke) reports its targets as not measured, unless these fields are FULL's.
CASE_SIZES: dict[str, tuple[str, ...]] = {
    "forward": ("rows", "classes"),
    "forward_backward": ("rows", "classes"),
    "small": ("small_rows", "small_classes"),
    "sequence": ("batch", "time", "classes"),
    "dense": ("rows", "classes"),
    "binary": ("rows", "classes"),
    "ctc": ("ctc",),
    "linear": ("linear_rows", "features", "classes"),
    "distributed": ("rows", "classes"),
    "sweep": ("rows", "sweep"),
    "gpu": ("gpu_rows", "gpu_classes"),
    "half": ("rows", "classes"),
    "jax": ("rows", "classes", "batch", "time", "small_rows", "linear_rows", "features"),
    "compile": ("rows", "classes"),
}


def at_target_size(case: str, sizes: Sizes) -> bool:
    """Whether ``case`` run with ``sizes`` has the inputs its targets are set for (those of FULL)."""
    return all(getattr(sizes, name) == getattr(FULL, name) for name in CASE_SIZES[case])


def _torch_inputs(rows: int, classes: int, dtype: str = "float32", device: str = "cpu") -> tuple[Any, Any]:
    torch = importlib.import_module("torch")
    generator = torch.Generator(device=device).manual_seed(0)
    logits = torch.randn(rows, classes, generator=generator, device=device).to(getattr(torch, dtype))
    labels = torch.randint(0, classes, (rows,), generator=generator, device=device)
    return logits, labels


def _forward_torch(rows: int, classes: int, case: str, targets: dict[str, float]) -> Bench:
    torch_f = importlib.import_module("torch.nn.functional")
    logits, labels = _torch_inputs(rows, classes)
    return Bench(
        case,
        "torch-cpu",
        f"{rows}x{classes}",
        "float32",
        lambda: al.sparse_softmax_cross_entropy(logits, labels, reduction="mean"),
        {"F.cross_entropy": lambda: torch_f.cross_entropy(logits, labels), "sum": lambda: logits.sum()},
        targets,
        classes=classes,
    )


def _forward_numpy(rows: int, classes: int, case: str, targets: dict[str, float]) -> Bench:
    import numpy as np

    rng = np.random.default_rng(0)
    logits = rng.standard_normal((rows, classes), dtype=np.float32)
    labels = rng.integers(0, classes, rows)
    peers: dict[str, Callable[[], Any]] = {"sum": lambda: np.sum(logits)}
    if _installed("scipy"):
        special = importlib.import_module("scipy.special")

        def scipy_idiom() -> Any:
            log_probs = special.log_softmax(logits, axis=-1)
            return -np.mean(np.take_along_axis(log_probs, labels[:, None], axis=-1))

        peers = {"scipy log_softmax": scipy_idiom, **peers}
    return Bench(
        case,
        "numpy",
        f"{rows}x{classes}",
        "float32",
        lambda: al.sparse_softmax_cross_entropy(logits, labels, reduction="mean"),
        peers,
        targets,
        classes=classes,
    )


def _forward_jax(rows: int, classes: int, case: str) -> Bench:
    jax = importlib.import_module("jax")
    jnp = importlib.import_module("jax.numpy")
    key_logits, key_labels = jax.random.split(jax.random.key(0))
    logits = jax.random.normal(key_logits, (rows, classes), dtype=jnp.float32)
    labels = jax.random.randint(key_labels, (rows,), 0, classes)
    ours = jax.jit(lambda x, y: al.sparse_softmax_cross_entropy(x, y, reduction="mean"))
    peers: dict[str, Callable[[], Any]] = {}
    if _installed("optax"):
        optax = importlib.import_module("optax")
        theirs = jax.jit(lambda x, y: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(x, y)))
        peers["optax"] = lambda: theirs(logits, labels).block_until_ready()
    floor = jax.jit(jnp.sum)
    peers["sum"] = lambda: floor(logits).block_until_ready()
    return Bench(
        case,
        "jax-cpu (jit)",
        f"{rows}x{classes}",
        "float32",
        lambda: ours(logits, labels).block_until_ready(),
        peers,
        classes=classes,
    )


def forward_cases(s: Sizes) -> Iterator[Callable[[], Bench]]:
    if _installed("torch"):
        yield lambda: _forward_torch(s.rows, s.classes, "forward", {"F.cross_entropy": 1.5})
    yield lambda: _forward_numpy(s.rows, s.classes, "forward", {"scipy log_softmax": 1.5, "sum": 1 / 6})
    if _installed("jax"):
        yield lambda: _forward_jax(s.rows, s.classes, "forward")


def sweep_cases(s: Sizes) -> Iterator[Callable[[], Bench]]:
    for classes in s.sweep:
        if _installed("torch"):
            yield functools.partial(_forward_torch, s.rows, classes, "sweep", {})
        yield functools.partial(_forward_numpy, s.rows, classes, "sweep", {})


def small_cases(s: Sizes) -> Iterator[Callable[[], Bench]]:
    if _installed("torch"):
        yield lambda: _forward_torch(s.small_rows, s.small_classes, "small", {"F.cross_entropy": 0.2})
    yield lambda: _forward_numpy(s.small_rows, s.small_classes, "small", {"scipy log_softmax": 1.0})


def forward_backward_cases(s: Sizes) -> Iterator[Callable[[], Bench]]:
    if not _installed("torch"):
        return

    def make() -> Bench:
        torch_f = importlib.import_module("torch.nn.functional")
        logits, labels = _torch_inputs(s.rows, s.classes)
        logits.requires_grad_(True)

        def ours() -> Any:
            al.sparse_softmax_cross_entropy(logits, labels, reduction="mean").backward()
            return logits.grad

        def theirs() -> Any:
            torch_f.cross_entropy(logits, labels).backward()
            return logits.grad

        return Bench(
            "forward_backward",
            "torch-cpu",
            f"{s.rows}x{s.classes}",
            "float32",
            ours,
            {"F.cross_entropy": theirs},
            {"F.cross_entropy": 2.0},
            classes=s.classes,
            reset=_dropping_grad(logits),
        )

    yield make

    def make_numpy() -> Bench:
        import numpy as np

        rng = np.random.default_rng(0)
        logits = rng.standard_normal((s.rows, s.classes), dtype=np.float32)
        labels = rng.integers(0, s.classes, s.rows)
        f = al.value_and_grad(al.sparse_softmax_cross_entropy)
        return Bench(
            "forward_backward",
            "numpy (value_and_grad)",
            f"{s.rows}x{s.classes}",
            "float32",
            lambda: f(logits, labels, reduction="mean"),
            {"sum": lambda: np.sum(logits)},
            classes=s.classes,
        )

    yield make_numpy


def _pass(loss: Callable[[], Any], backward: bool) -> Callable[[], Any]:
    """``loss`` itself, or with ``backward`` a call of ``loss().backward()``."""
    return (lambda: loss().backward()) if backward else loss


def _dropping_grad(*tensors: Any) -> Callable[[], None]:
    """A ``reset`` that drops the ``.grad`` of ``tensors``, as ``optimizer.zero_grad()`` does."""

    def reset() -> None:
        for tensor in tensors:
            tensor.grad = None

    return reset


def sequence_cases(s: Sizes) -> Iterator[Callable[[], Bench]]:
    if not _installed("torch"):
        return

    def make(backward: bool) -> Bench:
        torch = importlib.import_module("torch")
        torch_f = importlib.import_module("torch.nn.functional")
        logits, labels = _torch_inputs(s.batch * s.time, s.classes)
        logits = logits.reshape(s.batch, s.time, s.classes).requires_grad_(backward)
        labels = labels.reshape(s.batch, s.time)
        weights = (torch.arange(s.time) < s.time - 3).to(torch.float32).expand(s.batch, s.time)

        def plain() -> Any:
            losses = torch_f.cross_entropy(
                logits.reshape(-1, s.classes), labels.reshape(-1), reduction="none"
            )
            return (losses * weights.reshape(-1)).sum() / weights.sum()

        return Bench(
            "sequence_loss fwd+bwd" if backward else "sequence_loss",
            "torch-cpu",
            f"{s.batch}x{s.time}x{s.classes}",
            "float32",
            _pass(lambda: al.sequence_loss(logits, labels, weights), backward),
            {"F.cross_entropy": _pass(plain, backward)},
            {} if backward else {"F.cross_entropy": 1.5},  # the issue sets no target for the backward
            classes=s.classes,
            reset=_dropping_grad(logits),
        )

    yield functools.partial(make, False)
    yield functools.partial(make, True)


def dense_cases(s: Sizes) -> Iterator[Callable[[], Bench]]:
    """Probability targets (distillation), forward and forward + backward; no target in the issue."""
    if not _installed("torch"):
        return

    def make(backward: bool) -> Bench:
        torch = importlib.import_module("torch")
        torch_f = importlib.import_module("torch.nn.functional")
        logits, _ = _torch_inputs(s.rows, s.classes)
        targets = torch.softmax(torch.roll(logits, 1, dims=0) * 2.0, dim=-1)  # another row's, sharpened
        logits.requires_grad_(backward)

        return Bench(
            "dense fwd+bwd" if backward else "dense",
            "torch-cpu",
            f"{s.rows}x{s.classes}",
            "float32",
            _pass(lambda: al.softmax_cross_entropy(logits, targets, reduction="mean"), backward),
            {"F.cross_entropy": _pass(lambda: torch_f.cross_entropy(logits, targets), backward)},
            classes=s.classes,
            reset=_dropping_grad(logits),
        )

    yield functools.partial(make, False)
    yield functools.partial(make, True)


def binary_cases(s: Sizes) -> Iterator[Callable[[], Bench]]:
    """Multi-label losses, forward + backward of the mean: ``sigmoid_binary_cross_entropy`` and
    ``sigmoid_focal_loss`` (alpha 0.25, gamma 2) against PyTorch's loss and torchvision's formula,
    the plain NumPy formulas (value and hand-written gradient) and optax under ``jax.jit`` (issue 15)."""

    def torch_case(loss: str) -> Bench:
        torch = importlib.import_module("torch")
        torch_f = importlib.import_module("torch.nn.functional")
        logits, _ = _torch_inputs(s.rows, s.classes)
        targets = (torch.rand(s.rows, s.classes, generator=torch.Generator().manual_seed(1)) > 0.5).float()
        logits.requires_grad_(True)

        def torchvision() -> Any:  # torchvision.ops.sigmoid_focal_loss, reduction "mean"
            p = torch.sigmoid(logits)
            ce = torch_f.binary_cross_entropy_with_logits(logits, targets, reduction="none")
            p_t = p * targets + (1 - p) * (1 - targets)
            alpha_t = 0.25 * targets + 0.75 * (1 - targets)
            return (alpha_t * ce * (1 - p_t) ** 2).mean()

        if loss == "bce":
            ours = _pass(lambda: al.sigmoid_binary_cross_entropy(logits, targets, reduction="mean"), True)
            peers = {
                "F.bce_with_logits": _pass(
                    lambda: torch_f.binary_cross_entropy_with_logits(logits, targets), True
                )
            }
        else:
            ours = _pass(lambda: al.sigmoid_focal_loss(logits, targets, alpha=0.25, reduction="mean"), True)
            peers = {"torchvision formula": _pass(torchvision, True)}
        return Bench(
            f"{loss} fwd+bwd",
            "torch-cpu",
            f"{s.rows}x{s.classes}",
            "float32",
            ours,
            peers,
            {next(iter(peers)): 1.0},
            reset=_dropping_grad(logits),
        )

    def numpy_case(loss: str) -> Bench:
        import numpy as np

        rng = np.random.default_rng(0)
        z = rng.standard_normal((s.rows, s.classes), dtype=np.float32)
        t = (rng.random((s.rows, s.classes)) > 0.5).astype(np.float32)

        def plain() -> Any:  # the textbook formula and its gradient, as a NumPy user writes them
            ce = np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))
            p = 1 / (1 + np.exp(-z))
            if loss == "bce":
                return ce.mean(), (p - t) / z.size
            p_t = p * t + (1 - p) * (1 - t)
            alpha_t = 0.25 * t + 0.75 * (1 - t)
            m = 1 - p_t
            d_m = p * (1 - p) * (1 - 2 * t)
            grad = alpha_t * (m**2 * (p - t) + 2 * m * d_m * ce) / z.size
            return (alpha_t * ce * m**2).mean(), grad

        function = al.sigmoid_binary_cross_entropy if loss == "bce" else al.sigmoid_focal_loss
        options = {"reduction": "mean"} if loss == "bce" else {"alpha": 0.25, "reduction": "mean"}
        ours = al.value_and_grad(function)
        return Bench(
            f"{loss} value_and_grad",
            "numpy",
            f"{s.rows}x{s.classes}",
            "float32",
            lambda: ours(z, t, **options),
            {"NumPy formula": plain},
            {"NumPy formula": 1.5},
        )

    def jax_case(loss: str) -> Bench:
        jax = importlib.import_module("jax")
        jnp = importlib.import_module("jax.numpy")
        optax = importlib.import_module("optax.losses")
        key_logits, key_targets = jax.random.split(jax.random.key(0))
        z = jax.random.normal(key_logits, (s.rows, s.classes), dtype=jnp.float32)
        t = (jax.random.uniform(key_targets, (s.rows, s.classes)) > 0.5).astype(jnp.float32)
        if loss == "bce":
            ours = jax.jit(
                jax.value_and_grad(lambda x: al.sigmoid_binary_cross_entropy(x, t, reduction="mean"))
            )
            theirs = jax.jit(jax.value_and_grad(lambda x: jnp.mean(optax.sigmoid_binary_cross_entropy(x, t))))
        else:
            ours = jax.jit(
                jax.value_and_grad(lambda x: al.sigmoid_focal_loss(x, t, alpha=0.25, reduction="mean"))
            )
            theirs = jax.jit(
                jax.value_and_grad(lambda x: jnp.mean(optax.sigmoid_focal_loss(x, t, alpha=0.25)))
            )
        return Bench(
            f"jax grad {loss}",
            "jax-cpu (jit)",
            f"{s.rows}x{s.classes}",
            "float32",
            lambda: jax.block_until_ready(ours(z)),
            {"optax": lambda: jax.block_until_ready(theirs(z))},
            {"optax": 1.0},
        )

    for loss in ("bce", "focal"):
        if _installed("torch"):
            yield functools.partial(torch_case, loss)
        yield functools.partial(numpy_case, loss)
        if _installed("jax") and _installed("optax"):
            yield functools.partial(jax_case, loss)


def _ctc_inputs(batch: int, time: int, classes: int, width: int) -> tuple[Any, Any, Any, Any]:
    """NumPy float32 logits, labels in [1, C) and lengths (labels: at least half the width; frames: at
    least 80 %) of a ctc case: every sequence feasible."""
    import numpy as np

    rng = np.random.default_rng(0)
    logits = rng.standard_normal((batch, time, classes), dtype=np.float32)
    labels = rng.integers(1, classes, size=(batch, width))
    logit_lengths = rng.integers(time * 4 // 5, time + 1, size=batch)
    label_lengths = rng.integers(max(width // 2, 1), width + 1, size=batch)
    return logits, labels, logit_lengths, label_lengths


def ctc_cases(s: Sizes) -> Iterator[Callable[[], Bench]]:
    """``ctc_loss`` forward + backward of the mean (issue 16): torch CPU against ``F.ctc_loss`` (on the
    log-softmax, time-major; ``ctc_loss`` hands eager calls to it, and its own recursion is reported
    too), JAX ``jit(value_and_grad)`` against ``optax.ctc_loss`` (of the sum), and
    NumPy's ``value_and_grad`` reported against both."""

    def torch_peer(sizes: tuple[int, int, int, int]) -> tuple[Callable[[], Any], Any]:
        torch = importlib.import_module("torch")
        torch_f = importlib.import_module("torch.nn.functional")
        logits, labels, logit_lengths, label_lengths = (torch.asarray(a) for a in _ctc_inputs(*sizes))
        logits.requires_grad_(True)

        def theirs() -> Any:
            log_probs = torch.log_softmax(logits, -1).transpose(0, 1)
            return torch_f.ctc_loss(log_probs, labels, logit_lengths, label_lengths)

        return _pass(theirs, True), (logits, labels, logit_lengths, label_lengths)

    def optax_peer(sizes: tuple[int, int, int, int]) -> tuple[Callable[[], Any], Callable[[], Any]]:
        jax = importlib.import_module("jax")
        jnp = importlib.import_module("jax.numpy")
        optax = importlib.import_module("optax")
        logits, labels, logit_lengths, label_lengths = _ctc_inputs(*sizes)
        z, y = jnp.asarray(logits), jnp.asarray(labels)
        a, b = jnp.asarray(logit_lengths), jnp.asarray(label_lengths)
        logit_paddings = (jnp.arange(logits.shape[1])[None, :] >= a[:, None]).astype(jnp.float32)
        label_paddings = (jnp.arange(labels.shape[1])[None, :] >= b[:, None]).astype(jnp.float32)
        ours = jax.jit(
            jax.value_and_grad(lambda x: al.ctc_loss(x, y, logit_lengths=a, label_lengths=b).sum())
        )
        theirs = jax.jit(
            jax.value_and_grad(lambda x: optax.ctc_loss(x, logit_paddings, y, label_paddings).sum())
        )
        return lambda: jax.block_until_ready(ours(z)), lambda: jax.block_until_ready(theirs(z))

    def size(sizes: tuple[int, int, int, int]) -> str:
        return "B{}xT{}xC{}xS{}".format(*sizes)

    def torch_case(sizes: tuple[int, int, int, int]) -> Bench:
        theirs, (logits, labels, logit_lengths, label_lengths) = torch_peer(sizes)
        options = {"logit_lengths": logit_lengths, "label_lengths": label_lengths, "reduction": "mean"}
        settings = importlib.import_module("arrayloss._lib._settings").settings
        ours = _pass(lambda: al.ctc_loss(logits, labels, **options), True)

        def recursion() -> Any:  # the array-API recursion, not handed to F.ctc_loss
            with settings(delegate_to_torch=False):
                return al.ctc_loss(logits, labels, **options)

        return Bench(
            "ctc fwd+bwd",
            "torch-cpu",
            size(sizes),
            "float32",
            ours,
            {"F.ctc_loss": theirs, "arrayloss recursion": _pass(recursion, True)},
            {"F.ctc_loss": 1.0},
            reset=_dropping_grad(logits),
        )

    def jax_case(sizes: tuple[int, int, int, int]) -> Bench:
        ours, theirs = optax_peer(sizes)
        return Bench(
            "jax grad ctc", "jax-cpu (jit)", size(sizes), "float32", ours, {"optax": theirs}, {"optax": 1.0}
        )

    def numpy_case(sizes: tuple[int, int, int, int]) -> Bench:
        logits, labels, logit_lengths, label_lengths = _ctc_inputs(*sizes)
        options = {"logit_lengths": logit_lengths, "label_lengths": label_lengths, "reduction": "mean"}
        ours = al.value_and_grad(al.ctc_loss)
        peers: dict[str, Callable[[], Any]] = {}
        graded = []  # the torch peer's logits, whose gradient is dropped before each call
        if _installed("torch"):
            peers["F.ctc_loss (torch)"], (torch_logits, *_) = torch_peer(sizes)
            graded.append(torch_logits)
        if _installed("jax") and _installed("optax"):
            peers["optax (jax jit)"] = optax_peer(sizes)[1]
        return Bench(
            "ctc value_and_grad",
            "numpy",
            size(sizes),
            "float32",
            lambda: ours(logits, labels, **options),
            peers,
            reset=_dropping_grad(*graded),
        )

    for sizes in s.ctc:
        if _installed("torch"):
            yield functools.partial(torch_case, sizes)
        if _installed("jax") and _installed("optax"):
            yield functools.partial(jax_case, sizes)
        yield functools.partial(numpy_case, sizes)


def linear_cases(s: Sizes) -> Iterator[Callable[[], Bench]]:
    """``linear_cross_entropy`` forward + backward against the logits and ``F.cross_entropy``; with
    ``softcap=30`` (Gemma 2's) against itself without, which issue 15 allows 15 % more time."""
    if not _installed("torch"):
        return

    def make(softcap: float | None) -> Bench:
        torch = importlib.import_module("torch")
        torch_f = importlib.import_module("torch.nn.functional")
        generator = torch.Generator().manual_seed(0)
        hidden = torch.randn(s.linear_rows, s.features, generator=generator).requires_grad_(True)
        weight = (
            torch.randn(s.classes, s.features, generator=generator) / math.sqrt(s.features)
        ).requires_grad_(True)
        labels = torch.randint(0, s.classes, (s.linear_rows,), generator=generator)

        def loss(cap: float | None) -> Callable[[], Any]:
            def run() -> Any:
                al.linear_cross_entropy(hidden, weight, labels, reduction="mean", softcap=cap).backward()
                return hidden.grad, weight.grad

            return run

        def theirs() -> Any:
            torch_f.cross_entropy(hidden @ weight.T, labels).backward()
            return hidden.grad, weight.grad

        peers, targets = {"logits + F.cross_entropy": theirs}, {"logits + F.cross_entropy": 0.8}
        if softcap is not None:
            peers, targets = {"without softcap": loss(None)}, {"without softcap": 1 / 1.15}
        return Bench(
            "linear_cross_entropy fwd+bwd" + ("" if softcap is None else f" softcap={softcap:g}"),
            "torch-cpu",
            f"{s.linear_rows}x{s.features}x{s.classes}",
            "float32",
            loss(softcap),
            peers,
            targets,
            classes=s.classes,
            reset=_dropping_grad(hidden, weight),
        )

    yield functools.partial(make, None)
    yield functools.partial(make, 30.0)


class _Ranks:
    """Worker processes (``distributed_worker.py``) forming a gloo group on 127.0.0.1, driven by lines
    on their stdin; stopped when this object is collected or at exit."""

    def __init__(self, world: int, rows: int, classes: int) -> None:
        import atexit
        import socket
        import subprocess
        from pathlib import Path

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        script = Path(__file__).resolve().parent / "distributed_worker.py"
        source = str(Path(al.__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")])}
        self.workers = [
            subprocess.Popen(
                [sys.executable, str(script), str(rank), str(world), str(port), str(rows), str(classes)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
            for rank in range(world)
        ]
        atexit.register(self.close)

    def ask(self, command: str) -> list[str]:
        for worker in self.workers:
            assert worker.stdin is not None
            worker.stdin.write(command + "\n")
            worker.stdin.flush()
        answers = []
        for worker in self.workers:
            assert worker.stdout is not None
            answer = worker.stdout.readline().strip()
            if not answer:
                raise RuntimeError(f"a distributed_worker.py rank exited (code {worker.wait()})")
            answers.append(answer)
        return answers

    def close(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                assert worker.stdin is not None
                worker.stdin.write("quit\n")
                worker.stdin.close()
                worker.wait(timeout=30)

    def __del__(self) -> None:
        self.close()


def distributed_cases(s: Sizes) -> Iterator[Callable[[], Bench]]:
    """Issue 17: ``vocab_parallel_cross_entropy`` forward + backward on 2 ranks (gloo, one thread each,
    processes of this machine) against the single-process loss on the full logits: F.cross_entropy
    and arrayloss (PyTorch's threads). Peak memory: arrayloss's is the largest of a rank's."""
    if not _installed("torch") or not importlib.import_module("torch.distributed").is_available():
        return

    def make() -> Bench:
        torch_f = importlib.import_module("torch.nn.functional")
        logits, labels = _torch_inputs(s.rows, s.classes)
        logits.requires_grad_(True)
        ranks = _Ranks(2, s.rows, s.classes)
        ranks.ask("run")  # the group is up

        def single(loss: Callable[..., Any]) -> Callable[[], Any]:
            return lambda: loss(logits, labels, reduction="mean").backward()

        return Bench(
            "vocab_parallel fwd+bwd 2 ranks",
            "torch-cpu gloo",
            f"{s.rows}x{s.classes}",
            "float32",
            lambda: ranks.ask("run"),
            {
                "F.cross_entropy 1 process": single(torch_f.cross_entropy),
                "arrayloss 1 process": single(al.sparse_softmax_cross_entropy),
            },
            memory="ranks",
            rank_peaks=lambda: max(int(peak) for peak in ranks.ask("peak")),
            classes=s.classes,
            reset=_dropping_grad(logits),
        )

    yield make


def gpu_cases(s: Sizes) -> Iterator[Callable[[], Bench]]:
    torch = importlib.import_module("torch") if _installed("torch") else None
    if torch is not None and torch.cuda.is_available():
        for dtype in ("float32", "bfloat16"):
            yield functools.partial(_gpu_torch, s, dtype, False)
            yield functools.partial(_gpu_torch, s, dtype, True)
        yield functools.partial(_gpu_ctc, s.ctc[0])
    if _installed("cupy"):
        cupy = importlib.import_module("cupy")
        if cupy.cuda.runtime.getDeviceCount() > 0:
            yield lambda: _gpu_cupy(s)


def _gpu_torch(s: Sizes, dtype: str, backward: bool) -> Bench:
    """Issue 5's target 7: forward within 1.5x of one read of the logits (a ``sum``); forward and
    backward faster than F.cross_entropy and on par with Liger-Kernel's loss where it is installed."""
    torch = importlib.import_module("torch")
    torch_f = importlib.import_module("torch.nn.functional")
    logits, labels = _torch_inputs(s.gpu_rows, s.gpu_classes, dtype, "cuda")
    logits.requires_grad_(backward)
    peers: dict[str, Callable[[], Any]] = {
        "F.cross_entropy": _pass(lambda: torch_f.cross_entropy(logits, labels), backward)
    }
    compiled = torch.compile(lambda z: torch_f.cross_entropy(z, labels), fullgraph=True)
    peers["compiled F"] = _pass(lambda: compiled(logits), backward)
    if not backward:
        peers["sum"] = lambda: logits.sum(dtype=torch.float32)
    if _installed("liger_kernel"):
        liger = importlib.import_module("liger_kernel.transformers")
        liger_loss = liger.LigerCrossEntropyLoss()
        peers["liger"] = _pass(lambda: liger_loss(logits, labels), backward)
    targets = {"F.cross_entropy": 1.0, "liger": 1.0} if backward else {"sum": 1 / 1.5}  # issue 5, target 7
    return Bench(
        "forward_backward (gpu)" if backward else "forward (gpu)",
        "torch-cuda",
        f"{s.gpu_rows}x{s.gpu_classes}",
        dtype,
        _pass(lambda: al.sparse_softmax_cross_entropy(logits, labels, reduction="mean"), backward),
        peers,
        targets,
        memory="torch-cuda",
        classes=s.gpu_classes,
        sync=torch.cuda.synchronize,
        reset=_dropping_grad(logits),
    )


def _gpu_ctc(sizes: tuple[int, int, int, int], device: str = "cuda") -> Bench:
    """``ctc_loss`` forward + backward of the mean on CUDA tensors (the operator that runs
    ``F.ctc_loss``'s kernels on unchecked labels) against ``F.ctc_loss`` there (issue 16)."""
    torch = importlib.import_module("torch")
    torch_f = importlib.import_module("torch.nn.functional")
    logits, labels, logit_lengths, label_lengths = (
        torch.asarray(a, device=device) for a in _ctc_inputs(*sizes)
    )
    logits.requires_grad_(True)
    options = {"logit_lengths": logit_lengths, "label_lengths": label_lengths, "reduction": "mean"}

    def theirs() -> Any:
        log_probs = torch.log_softmax(logits, -1).transpose(0, 1)
        return torch_f.ctc_loss(log_probs, labels, logit_lengths, label_lengths)

    return Bench(
        "ctc fwd+bwd (gpu)",
        f"torch-{device}",
        "B{}xT{}xC{}xS{}".format(*sizes),
        "float32",
        _pass(lambda: al.ctc_loss(logits, labels, **options), True),
        {"F.ctc_loss": _pass(theirs, True)},
        memory="torch-cuda" if device == "cuda" else "cpu",
        sync=torch.cuda.synchronize if device == "cuda" else lambda: None,
        reset=_dropping_grad(logits),
    )


def _gpu_cupy(s: Sizes) -> Bench:
    cupy = importlib.import_module("cupy")
    rng = cupy.random.default_rng(0)
    logits = rng.standard_normal((s.gpu_rows, s.gpu_classes), dtype=cupy.float32)
    labels = rng.integers(0, s.gpu_classes, s.gpu_rows)

    def sync() -> None:
        cupy.cuda.Device().synchronize()

    return Bench(
        "forward (gpu)",
        "cupy",
        f"{s.gpu_rows}x{s.gpu_classes}",
        "float32",
        lambda: al.sparse_softmax_cross_entropy(logits, labels, reduction="mean"),
        {"sum": lambda: cupy.sum(logits)},
        {"sum": 1 / 1.5},
        memory="cupy",
        classes=s.gpu_classes,
        sync=sync,
    )


def half_cases(s: Sizes) -> Iterator[Callable[[], Bench]]:
    """bfloat16 and float16 logits on torch CPU, forward + backward, against F.cross_entropy in the same
    dtype (both accumulate in float32); issue 14's target: at least 1.0x."""
    if not _installed("torch"):
        return

    def make(dtype: str) -> Bench:
        torch_f = importlib.import_module("torch.nn.functional")
        logits, labels = _torch_inputs(s.rows, s.classes, dtype)
        logits.requires_grad_(True)
        return Bench(
            "half fwd+bwd",
            "torch-cpu",
            f"{s.rows}x{s.classes}",
            dtype,
            lambda: al.sparse_softmax_cross_entropy(logits, labels, reduction="mean").backward(),
            {"F.cross_entropy": lambda: torch_f.cross_entropy(logits, labels).backward()},
            {"F.cross_entropy": 1.0},
            classes=s.classes,
            reset=_dropping_grad(logits),
        )

    for dtype in ("bfloat16", "float16"):
        yield functools.partial(make, dtype)


def jax_cases(s: Sizes) -> Iterator[Callable[[], Bench]]:
    """JAX under ``jit``: ``value_and_grad`` of the mean sparse cross entropy (plain and smoothed) and of
    ``sequence_loss`` against optax, per-example gradients ``vmap(grad)``, and ``linear_cross_entropy``
    against the materialised logits (issue 14's targets)."""
    if not (_installed("jax") and _installed("optax")):
        return

    def make(name: str) -> Bench:
        jax = importlib.import_module("jax")
        jnp = importlib.import_module("jax.numpy")
        optax = importlib.import_module("optax")
        key_logits, key_labels = jax.random.split(jax.random.key(0))
        if name == "vmap(grad)":
            shape = (64, s.small_rows * 16, s.classes // 32)
            logits = jax.random.normal(key_logits, shape, dtype=jnp.float32)
            labels = jax.random.randint(key_labels, shape[:2], 0, shape[2])

            def loss_ours(z: Any, y: Any) -> Any:
                return al.sparse_softmax_cross_entropy(z, y, reduction="mean")

            def loss_theirs(z: Any, y: Any) -> Any:
                return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(z, y))

            ours = jax.jit(jax.vmap(jax.grad(loss_ours)))
            theirs = jax.jit(jax.vmap(jax.grad(loss_theirs)))
            return Bench(
                "jax vmap(grad)",
                "jax-cpu (jit)",
                "x".join(map(str, shape)),
                "float32",
                lambda: ours(logits, labels).block_until_ready(),
                {"optax": lambda: theirs(logits, labels).block_until_ready()},
                {"optax": 0.8},
                classes=shape[2],
            )
        sequence = name == "sequence_loss"
        shape = (s.batch, s.time, s.classes) if sequence else (s.rows, s.classes)
        logits = jax.random.normal(key_logits, shape, dtype=jnp.float32)
        labels = jax.random.randint(key_labels, shape[:-1], 0, s.classes)
        smoothing = 0.1 if name == "label_smoothing" else 0.0
        weights = (jnp.arange(s.time) < s.time - 3).astype(jnp.float32) * jnp.ones((s.batch, 1))

        def loss_ours(z: Any) -> Any:
            if sequence:
                return al.sequence_loss(z, labels, weights)
            return al.sparse_softmax_cross_entropy(z, labels, label_smoothing=smoothing, reduction="mean")

        def loss_theirs(z: Any) -> Any:
            if sequence:
                losses = optax.softmax_cross_entropy_with_integer_labels(z, labels)
                return jnp.sum(losses * weights) / jnp.sum(weights)
            if smoothing:
                targets = optax.smooth_labels(jax.nn.one_hot(labels, s.classes), smoothing)
                return jnp.mean(optax.softmax_cross_entropy(z, targets))
            return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(z, labels))

        ours = jax.jit(jax.value_and_grad(loss_ours))
        theirs = jax.jit(jax.value_and_grad(loss_theirs))
        return Bench(
            f"jax grad {name}",
            "jax-cpu (jit)",
            "x".join(map(str, shape)),
            "float32",
            lambda: jax.block_until_ready(ours(logits)),
            {"optax": lambda: jax.block_until_ready(theirs(logits))},
            {"optax": 1.0},
            classes=s.classes,
        )

    for name in ("plain", "label_smoothing", "sequence_loss", "vmap(grad)"):
        yield functools.partial(make, name)
    yield functools.partial(_jax_linear, s)


def _jax_linear(s: Sizes) -> Bench:
    """``jit(value_and_grad)`` of the mean ``linear_cross_entropy`` against the materialised logits and
    optax; the peak memory is XLA's temp bytes of each compiled function (issue 14's target: at most a
    quarter of the materialised version's, at no more than 1.15x its time)."""
    jax = importlib.import_module("jax")
    jnp = importlib.import_module("jax.numpy")
    optax = importlib.import_module("optax")
    keys = jax.random.split(jax.random.key(0), 3)
    hidden = jax.random.normal(keys[0], (s.linear_rows, s.features), dtype=jnp.float32)
    weight = jax.random.normal(keys[1], (s.classes, s.features), dtype=jnp.float32) / math.sqrt(s.features)
    labels = jax.random.randint(keys[2], (s.linear_rows,), 0, s.classes)

    def loss_ours(h: Any, w: Any) -> Any:
        return al.linear_cross_entropy(h, w, labels, reduction="mean")

    def loss_theirs(h: Any, w: Any) -> Any:
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(h @ w.T, labels))

    ours, theirs = (
        jax.jit(jax.value_and_grad(f, argnums=(0, 1))).lower(hidden, weight).compile()
        for f in (loss_ours, loss_theirs)
    )
    peer = "logits + optax"
    return Bench(
        "jax grad linear",
        "jax-cpu (jit)",
        f"{s.linear_rows}x{s.features}x{s.classes}",
        "float32",
        lambda: jax.block_until_ready(ours(hidden, weight)),
        {peer: lambda: jax.block_until_ready(theirs(hidden, weight))},
        {peer: 1 / 1.15},
        memory="xla",
        xla_temp={
            name: compiled.memory_analysis().temp_size_in_bytes
            for name, compiled in (("arrayloss", ours), (peer, theirs))
        },
        classes=s.classes,
    )


COMPILE_OPTIONS = ("plain", "label_smoothing", "ignore_index", "class_weights", "weights", "z_loss", "dense")


def compile_cases(s: Sizes) -> Iterator[Callable[[], Bench]]:
    """``torch.compile`` forward + backward of every option against compiled ``F.cross_entropy`` (or its
    plain-torch equivalent where F has no such option); issue 14's target: at least 1.0x."""
    if not _installed("torch"):
        return

    def make(option: str) -> Bench:
        torch = importlib.import_module("torch")
        torch_f = importlib.import_module("torch.nn.functional")
        torch._dynamo.reset()
        logits, labels = _torch_inputs(s.rows, s.classes)
        logits.requires_grad_(True)
        generator = torch.Generator().manual_seed(1)
        class_weights = torch.rand(s.classes, generator=generator) + 0.5
        weights = torch.rand(s.rows, generator=generator)
        targets = torch.softmax(torch.roll(logits.detach(), 1, dims=0) * 2.0, dim=-1)
        if option == "ignore_index":
            labels[::7] = -100
        ours_options: dict[str, Any] = {
            "label_smoothing": {"label_smoothing": 0.1},
            "ignore_index": {"ignore_index": -100},
            "class_weights": {"class_weights": class_weights},
            "weights": {"weights": weights},
            "z_loss": {"z_loss": 1e-4},
        }.get(option, {})

        def ours(z: Any) -> Any:
            if option == "dense":
                return al.softmax_cross_entropy(z, targets, reduction="mean")
            return al.sparse_softmax_cross_entropy(z, labels, reduction="mean", **ours_options)

        def theirs(z: Any) -> Any:
            if option == "dense":
                return torch_f.cross_entropy(z, targets)
            if option == "weights":
                return (torch_f.cross_entropy(z, labels, reduction="none") * weights).sum() / weights.sum()
            if option == "z_loss":
                return torch_f.cross_entropy(z, labels) + 1e-4 * torch.logsumexp(z, dim=-1).square().mean()
            theirs_options = {"class_weights": {"weight": class_weights}}.get(option, ours_options)
            return torch_f.cross_entropy(z, labels, **theirs_options)

        compiled_ours = torch.compile(ours, fullgraph=True)
        compiled_theirs = torch.compile(theirs, fullgraph=True)
        return Bench(
            f"compile {option}",
            "torch-cpu (compile)",
            f"{s.rows}x{s.classes}",
            "float32",
            lambda: compiled_ours(logits).backward(),
            {"compiled F": lambda: compiled_theirs(logits).backward()},
            {"compiled F": 1.0},
            classes=s.classes,
            reset=_dropping_grad(logits),
        )

    for option in COMPILE_OPTIONS:
        yield functools.partial(make, option)


SUITE: dict[str, Callable[[Sizes], Iterator[Callable[[], Bench]]]] = {
    "forward": forward_cases,
    "forward_backward": forward_backward_cases,
    "small": small_cases,
    "sequence": sequence_cases,
    "dense": dense_cases,
    "binary": binary_cases,
    "ctc": ctc_cases,
    "linear": linear_cases,
    "distributed": distributed_cases,
    "sweep": sweep_cases,
    "gpu": gpu_cases,
    "half": half_cases,
    "jax": jax_cases,
    "compile": compile_cases,
}

# ---------------------------------------------------------------------------------------- output

COLUMNS = (
    ("case", 29),
    ("backend", 23),
    ("size", 18),
    ("dtype", 9),
    ("implementation", 26),
    ("median", 11),
    ("speed-up", 9),
    ("target", 10),
    ("peak MiB", 9),
)


def _format_time(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.1f} us"


def _target(r: Result) -> str:
    """The target cell: the least speed-up asked for and whether it is met, or that it was not measured."""
    if r.target is None:
        return ""
    if not r.at_target_size:
        return f">={r.target:.2g} not measured at this size"
    return f">={r.target:.2g}" + (" ok" if (r.speedup or 0) >= r.target else " NO")


def _cells(r: Result) -> tuple[str, ...]:
    speedup = "" if r.speedup is None else f"{r.speedup:.2f}x"
    peak = "" if r.peak_bytes is None else f"{r.peak_bytes / 2**20:.0f}"
    return (r.case, r.backend, r.size, r.dtype, r.impl, _format_time(r.median_s), speedup, _target(r), peak)


def _widths(rows: list[tuple[str, ...]]) -> list[int]:
    """Each column's width: COLUMNS's, or wider where a cell is longer (a target not measured)."""
    return [max([width, *(len(row[i]) + 1 for row in rows)]) for i, (_, width) in enumerate(COLUMNS)]


def format_row(r: Result, widths: list[int] | None = None) -> str:
    widths = widths or [width for _, width in COLUMNS]
    return "".join(f"{cell:<{width}}" for cell, width in zip(_cells(r), widths, strict=True)).rstrip()


def table(results: list[Result]) -> str:
    widths = _widths([_cells(r) for r in results])
    header = "".join(f"{name:<{width}}" for (name, _), width in zip(COLUMNS, widths, strict=True)).rstrip()
    return "\n".join([header, "-" * len(header), *(format_row(r, widths) for r in results)])


def _load_average() -> float | None:
    """The 1-minute load average (other processes competing for the CPUs), where the OS reports it."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
    }
    for name in ("numpy", "torch", "scipy", "jax", "cupy"):
        if _installed(name):
            info[name] = importlib.import_module(name).__version__
    if _installed("torch"):
        info["torch_threads"] = importlib.import_module("torch").get_num_threads()
    return info


def plot(results: list[Result], path: str) -> None:
    """Time and speed-up against the number of classes for the ``sweep`` case."""
    plt = importlib.import_module("matplotlib.pyplot")
    sweep = [r for r in results if r.case == "sweep"]
    fig, (ax_time, ax_ratio) = plt.subplots(1, 2, figsize=(11, 4))
    series = sorted({(r.backend, r.impl) for r in sweep})
    for backend, impl in series:
        rows = sorted((r for r in sweep if (r.backend, r.impl) == (backend, impl)), key=lambda r: r.classes)
        ax_time.plot(
            [r.classes for r in rows],
            [r.median_s * 1e3 for r in rows],
            marker="o",
            label=f"{backend}: {impl}",
        )
        if impl != "arrayloss":
            ax_ratio.plot(
                [r.classes for r in rows],
                [r.speedup for r in rows],
                marker="o",
                label=f"{backend}: vs {impl}",
            )
    ax_time.set(xscale="log", yscale="log", xlabel="classes C", ylabel="median time (ms)", title="time")
    ax_ratio.set(xscale="log", xlabel="classes C", ylabel="peer time / arrayloss time", title="speed-up")
    ax_ratio.axhline(1.0, color="grey", linewidth=0.8)
    for ax in (ax_time, ax_ratio):
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/bench.py", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, runs in seconds")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--plot", metavar="PATH", help="draw time and speed-up vs classes (needs matplotlib)")
    parser.add_argument("--repeat", type=int, default=5, help="timed calls of each implementation (median)")
    parser.add_argument(
        "--threads", type=int, help="PyTorch intra-op threads (torch.set_num_threads); default: PyTorch's"
    )
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(DEFAULT_CASES), help="cases to run")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.plot and not _installed("matplotlib"):
        parser.error("--plot needs matplotlib, which is not installed (pip install matplotlib)")
    sizes = SMOKE if args.smoke else FULL
    if args.threads is not None and _installed("torch"):
        importlib.import_module("torch").set_num_threads(args.threads)
    load_start = _load_average()
    makers = [(case, make) for case in args.cases for make in SUITE[case](sizes)]
    results: list[Result] = []
    for index, (case, make) in enumerate(makers, 1):
        bench = make()
        print(
            f"[{index}/{len(makers)}] {bench.case} {bench.backend} {bench.size} {bench.dtype}",
            file=sys.stderr,
            flush=True,
        )
        measured = measure(bench, args.repeat)
        for result in measured:
            result.at_target_size = at_target_size(case, sizes)
        results.extend(measured)
        del bench
    load = {"start": load_start, "end": _load_average()}
    machine_info = machine()
    print(table(results))
    print(
        f"load average (1 min) on {os.cpu_count()} CPUs: {load['start']} at the start, "
        f"{load['end']} at the end"
        + (f"; torch threads: {machine_info['torch_threads']}" if "torch_threads" in machine_info else "")
    )
    if args.json:
        payload = {
            "machine": machine_info,
            "load_average": load,
            "smoke": args.smoke,
            "repeat": args.repeat,
            "results": [{**vars(r), "median_s": r.median_s} for r in results],
        }
        with open(args.json, "w") as out:
            json.dump(payload, out, indent=1)
    if args.plot:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
