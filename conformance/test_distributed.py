"""arrayloss.distributed: the vocab-parallel losses against the float64 reference on the full logits.

On every backend: one rank holding every class (collectives that return their argument)
and two or three "ranks" run as threads of this process, whose collectives reduce the
ranks' arrays with the backend's own ``maximum`` and ``+`` (:class:`ThreadGroup`), with
shards of unequal width. Values against ``reference.sparse_ce`` of the full logits,
gradients (``arrayloss.value_and_grad``) against the single-process
``sparse_softmax_cross_entropy`` / ``linear_cross_entropy`` on NumPy float64 (whose own
gradients ``test_grad.py`` checks against finite differences).

On ``--backend=torch``: two processes with ``torch.distributed`` over gloo on 127.0.0.1
(``distributed_torch_worker.py``): values and ``.backward()`` gradients for every option,
the linear variant, shards of 20 and 17 classes.

On ``--backend=jax``: ``shard_map`` over 8 forced host devices in a subprocess
(``distributed_jax_worker.py``): value and gradient against the single-device loss, and
the compiled HLO's collectives: no all-gather, all-reduces of per-row size only.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import reference as ref
from conftest import repeated
from hypothesis import strategies as st
from test_properties import backend_property

import arrayloss as al
from arrayloss._lib._settings import settings as arrayloss_settings
from arrayloss.distributed import (
    Collectives,
    torch_collectives,
    vocab_parallel_cross_entropy,
    vocab_parallel_linear_cross_entropy,
)

HERE = Path(__file__).resolve().parent
ROWS, CLASSES, FEATURES = 6, 37, 4
SPLITS = {"one": (0, 37), "two": (0, 20, 37), "three": (0, 1, 30, 37)}  # unequal shards
OPTIONS: dict[str, dict[str, Any]] = {
    "plain": {},
    "smoothing": {"label_smoothing": 0.1},
    "z_loss": {"z_loss": 0.01},
    "ignore": {"ignore_index": 3},
    "everything": {"weights": True, "ignore_index": 3, "label_smoothing": 0.2, "z_loss": 0.05},
}


class OneRank:
    """The collectives of a group of one rank: every all-reduce returns its argument."""

    def max(self, x: Any, /) -> Any:
        return x

    def sum(self, x: Any, /) -> Any:
        return x


class ThreadGroup:
    """Collectives of ranks that are threads of this process: each all-reduce waits for every rank's
    array and combines them with the namespace's ``maximum`` or ``+`` (lazy arrays stay lazy)."""

    def __init__(self, size: int, xp: Any) -> None:
        self.xp = xp
        self.barrier = threading.Barrier(size, timeout=60)
        self.slots: list[Any] = [None] * size

    def rank(self, rank: int) -> Collectives:
        group = self

        class Member:
            def _reduce(self, x: Any, combine: Callable[[Any, Any], Any]) -> Any:
                group.slots[rank] = x
                group.barrier.wait()
                out = group.slots[0]
                for other in group.slots[1:]:
                    out = combine(out, other)
                group.barrier.wait()  # every rank has read the slots before they are reused
                return out

            def max(self, x: Any, /) -> Any:
                return self._reduce(x, group.xp.maximum)

            def sum(self, x: Any, /) -> Any:
                return self._reduce(x, lambda a, b: a + b)

        return Member()


def on_ranks(bounds: tuple[int, ...], xp: Any, fn: Callable[[int, int, int, Collectives], Any]) -> list[Any]:
    """``fn(rank, start, stop, collectives)`` on each rank (a thread), its shard ``[start, stop)``."""
    size = len(bounds) - 1
    if size == 1:
        return [fn(0, bounds[0], bounds[1], OneRank())]
    group = ThreadGroup(size, xp)

    def run(r: int) -> Any:
        try:
            return fn(r, bounds[r], bounds[r + 1], group.rank(r))
        except BaseException:
            group.barrier.abort()  # the other ranks stop waiting for this one
            raise

    with ThreadPoolExecutor(size) as pool:
        futures = [pool.submit(run, r) for r in range(size)]
    errors = [f.exception() for f in futures]
    failed = [e for e in errors if e is not None and not isinstance(e, threading.BrokenBarrierError)]
    if failed:  # the rank that failed, not the ranks it left waiting
        raise failed[0]
    return [f.result() for f in futures]


def problem(case: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(ROWS, CLASSES)) * 3.0
    labels = rng.integers(0, CLASSES, size=ROWS)
    labels[:3] = [3, 19, 20]  # the ignored class, the last of a shard, the first of the next
    options = dict(OPTIONS[case])
    if options.pop("weights", False):
        weights = rng.uniform(0.0, 2.0, size=ROWS)
        weights[1] = 0.0
        options["weights"] = weights
    return logits, labels, options


def on(backend: Any, options: dict[str, Any], dtype: str) -> dict[str, Any]:
    return {k: backend.asarray(v, dtype) if isinstance(v, np.ndarray) else v for k, v in options.items()}


@pytest.mark.parametrize("split", sorted(SPLITS))
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("case", sorted(OPTIONS))
def test_values_match_reference_on_every_rank(backend, case, reduction, split):
    logits, labels, options = problem(case)
    expected = ref.sparse_ce(logits, labels, reduction=reduction, **options)
    for dtype in ("float32", "float64"):
        if dtype not in backend.float_dtypes:
            continue

        def rank(r: int, start: int, stop: int, collectives: Collectives, dtype: str = dtype) -> Any:
            shard = backend.asarray(logits[:, start:stop], dtype)
            given, y = on(backend, options, dtype), backend.asarray(labels)
            return vocab_parallel_cross_entropy(
                shard, y, vocab_start=start, collectives=collectives, reduction=reduction, **given
            )

        for out in on_ranks(SPLITS[split], backend.xp, rank):
            backend.assert_close(out, expected, dtype=dtype, scale=10.0 if dtype == "float32" else 1.0)


@pytest.mark.parametrize("split", sorted(SPLITS))
@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("case", sorted(OPTIONS))
def test_gradient_is_the_local_slice_of_the_full_gradient(backend, case, reduction, split):
    logits, labels, options = problem(case, seed=1)
    value, grad = al.value_and_grad(al.sparse_softmax_cross_entropy)(
        logits, labels, reduction=reduction, **options
    )
    dtype = backend.float_dtypes[-1]
    given, y = on(backend, options, dtype), backend.asarray(labels)
    f = al.value_and_grad(vocab_parallel_cross_entropy)

    def rank(r: int, start: int, stop: int, collectives: Collectives) -> Any:
        shard = backend.asarray(logits[:, start:stop], dtype)
        return f(shard, y, vocab_start=start, collectives=collectives, reduction=reduction, **given)

    bounds = SPLITS[split]
    for r, (out, local) in enumerate(on_ranks(bounds, backend.xp, rank)):
        backend.assert_close(out, value, dtype=dtype)
        backend.assert_close(local, grad[:, bounds[r] : bounds[r + 1]], dtype=dtype)


def test_batched_logits_and_a_vocab_start_array(backend):
    """Logits ``(2, 3, C_local)`` and ``vocab_start`` given as 0-d integer arrays."""
    rng = np.random.default_rng(2)
    logits, labels = rng.normal(size=(2, 3, CLASSES)), rng.integers(0, CLASSES, size=(2, 3))
    dtype = backend.float_dtypes[-1]
    expected = ref.sparse_ce(logits, labels)
    y = backend.asarray(labels)

    def rank(r: int, start: int, stop: int, collectives: Collectives) -> Any:
        shard = backend.asarray(logits[..., start:stop], dtype)
        start_array = backend.asarray(start)
        return vocab_parallel_cross_entropy(shard, y, vocab_start=start_array, collectives=collectives)

    for out in on_ranks(SPLITS["two"], backend.xp, rank):
        backend.assert_close(out, expected, dtype=dtype)


def test_linear_default_chunks_pair_up_across_unequal_shards(backend):
    """Without ``chunk_size``, ranks whose shards differ in width (20 and 17 classes) take the same
    chunks of rows, so that their all-reduces pair up: the chunks do not follow the setting
    ``linear_chunk_bytes``, which here would give them 2 and 3 rows of float64 logits."""
    rng = np.random.default_rng(5)
    _, labels, options = problem("plain", seed=5)
    hidden, weight = rng.normal(size=(ROWS, FEATURES)), rng.normal(size=(CLASSES, FEATURES))
    expected = ref.sparse_ce(hidden @ weight.T, labels, reduction="mean", **options)
    dtype = backend.float_dtypes[-1]
    y, h = backend.asarray(labels), backend.asarray(hidden, dtype)

    def rank(r: int, start: int, stop: int, collectives: Collectives) -> Any:
        w = backend.asarray(weight[start:stop], dtype)
        with arrayloss_settings(linear_chunk_bytes=408):  # settings are per thread
            return vocab_parallel_linear_cross_entropy(
                h, w, y, vocab_start=start, collectives=collectives, reduction="mean"
            )

    for value in on_ranks(SPLITS["two"], backend.xp, rank):
        backend.assert_close(value, expected, dtype=dtype)


def test_linear_rows_of_weight_zero_may_hold_nan(backend):
    """Rows ignored or of weight 0 whose hidden values are NaN: the value and every rank's gradients
    are those of the batch with zeros in those rows. (With inf there, NumPy's matmul of the forward
    pass warns of ``inf - inf``; the numbers are the same.)"""
    rng = np.random.default_rng(4)
    _, labels, options = problem("everything", seed=4)  # row 0 ignored, row 1 of weight 0
    hidden, weight = rng.normal(size=(ROWS, FEATURES)), rng.normal(size=(CLASSES, FEATURES))
    clean, dirty = hidden.copy(), hidden.copy()
    clean[:2], dirty[:2] = 0.0, np.nan
    expected, (d_hidden, d_weight) = al.value_and_grad(al.linear_cross_entropy)(
        clean, weight, labels, reduction="mean", **options
    )
    dtype = backend.float_dtypes[-1]
    given, y, h = on(backend, options, dtype), backend.asarray(labels), backend.asarray(dirty, dtype)

    def rank(r: int, start: int, stop: int, collectives: Collectives) -> Any:
        w = backend.asarray(weight[start:stop], dtype)
        return al.value_and_grad(vocab_parallel_linear_cross_entropy)(
            h, w, y, vocab_start=start, collectives=collectives, reduction="mean", chunk_size=4, **given
        )

    bounds = SPLITS["two"]
    for r, (value, (g_hidden, g_weight)) in enumerate(on_ranks(bounds, backend.xp, rank)):
        backend.assert_close(value, expected, dtype=dtype)
        backend.assert_close(g_hidden, d_hidden, dtype=dtype)
        backend.assert_close(g_weight, d_weight[bounds[r] : bounds[r + 1]], dtype=dtype)


@pytest.mark.parametrize("chunk_size", [repeated(1), 4, None])
@pytest.mark.parametrize("case", ["plain", "everything"])
def test_linear_matches_linear_cross_entropy(backend, case, chunk_size):
    rng = np.random.default_rng(3)
    _, labels, options = problem(case, seed=3)
    hidden, weight = rng.normal(size=(ROWS, FEATURES)), rng.normal(size=(CLASSES, FEATURES))
    bias = rng.normal(size=CLASSES)
    reduction = "mean" if case == "everything" else "none"
    expected = ref.sparse_ce(hidden @ weight.T + bias, labels, reduction=reduction, **options)
    _, (d_hidden, d_weight, d_bias) = al.value_and_grad(al.linear_cross_entropy)(
        hidden, weight, labels, bias=bias, reduction=reduction, **options
    )
    dtype = backend.float_dtypes[-1]
    given, y, h = on(backend, options, dtype), backend.asarray(labels), backend.asarray(hidden, dtype)
    f = al.value_and_grad(vocab_parallel_linear_cross_entropy)

    def rank(r: int, start: int, stop: int, collectives: Collectives) -> Any:
        w, b = (backend.asarray(a[start:stop], dtype) for a in (weight, bias))
        value = vocab_parallel_linear_cross_entropy(
            h, w, y, bias=b, vocab_start=start, collectives=collectives, reduction=reduction,
            chunk_size=chunk_size, **given,
        )  # fmt: skip
        grads = f(
            h, w, y, bias=b, vocab_start=start, collectives=collectives, reduction=reduction,
            chunk_size=chunk_size, **given,
        )  # fmt: skip
        return value, grads

    bounds = SPLITS["two"]
    for r, (value, (out, (g_hidden, g_weight, g_bias))) in enumerate(on_ranks(bounds, backend.xp, rank)):
        backend.assert_close(value, expected, dtype=dtype)
        backend.assert_close(out, expected, dtype=dtype)
        backend.assert_close(g_hidden, d_hidden, dtype=dtype)  # the full gradient on every rank
        backend.assert_close(g_weight, d_weight[bounds[r] : bounds[r + 1]], dtype=dtype)
        backend.assert_close(g_bias, d_bias[bounds[r] : bounds[r + 1]], dtype=dtype)


def test_half_precision_accumulates_in_float32(backend):
    half = [d for d in ("float16", "bfloat16") if d in backend.float_dtypes]
    if not half:
        pytest.skip(f"{backend.name} has no half precision")
    logits, labels, _ = problem("plain", seed=4)
    for dtype in half:
        rounded = backend.to_numpy(backend.asarray(logits, dtype))
        expected = ref.sparse_ce(rounded, labels, reduction="mean")

        def rank(r: int, start: int, stop: int, collectives: Collectives, dtype: str = dtype) -> Any:
            shard = backend.asarray(backend.to_numpy(backend.asarray(logits, dtype))[:, start:stop], dtype)
            y = backend.asarray(labels)
            return vocab_parallel_cross_entropy(
                shard, y, vocab_start=start, collectives=collectives, reduction="mean"
            )

        for out in on_ranks(SPLITS["two"], backend.xp, rank):
            backend.assert_close(out, expected, dtype=dtype)


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_infinite_logits_with_label_smoothing(backend, reduction):
    """A row holding +inf (one of weight 0, one counted) with label smoothing: the numbers of
    ``sparse_softmax_cross_entropy`` on the full logits (NaN for the counted row), with no ``inf - inf``
    warning from the mean over the shards."""
    logits, labels, _ = problem("plain", seed=6)
    logits[0, 25] = logits[3, 2] = np.inf  # in the second and the first shard
    weights = np.ones(ROWS)
    weights[0] = 0.0
    options = {"label_smoothing": 0.1, "reduction": reduction, "weights": weights}
    expected = al.sparse_softmax_cross_entropy(logits, labels, **options)
    dtype = backend.float_dtypes[-1]
    y, given = backend.asarray(labels), on(backend, options, dtype)

    def rank(r: int, start: int, stop: int, collectives: Collectives) -> Any:
        shard = backend.asarray(logits[:, start:stop], dtype)
        return vocab_parallel_cross_entropy(shard, y, vocab_start=start, collectives=collectives, **given)

    for out in on_ranks(SPLITS["two"], backend.xp, rank):
        got = backend.check_result(out, dtype=dtype, shape=expected.shape)
        np.testing.assert_allclose(got, expected, rtol=1e-6, equal_nan=True)


def test_labels_outside_every_shard(backend):
    """Eager arrays: every rank raises, naming the label and the number of classes; others: NaN."""
    logits, labels, _ = problem("plain", seed=5)
    labels[2] = CLASSES + 3
    dtype = backend.float_dtypes[-1]
    y = backend.asarray(labels)

    def rank(r: int, start: int, stop: int, collectives: Collectives) -> Any:
        shard = backend.asarray(logits[:, start:stop], dtype)
        try:
            return vocab_parallel_cross_entropy(shard, y, vocab_start=start, collectives=collectives)
        except ValueError as error:
            return error

    outs = on_ranks(SPLITS["two"], backend.xp, rank)
    if backend.eager:
        for error in outs:
            assert isinstance(error, ValueError)
            assert f"labels contains {CLASSES + 3}, outside the valid range [0, {CLASSES})" in str(error)
        return
    for out in outs:
        got = backend.to_numpy(out)
        assert np.isnan(got[2]) and np.isfinite(np.delete(got, 2)).all()


def test_overlapping_shards_are_reported(backend):
    if not backend.eager:
        pytest.skip("values are checked on eager host arrays only")
    logits, labels, _ = problem("plain", seed=6)
    y = backend.asarray(labels)

    def rank(r: int, start: int, stop: int, collectives: Collectives) -> Any:
        with pytest.raises(ValueError, match=r"shards .* overlap"):
            vocab_parallel_cross_entropy(
                backend.asarray(logits[:, :20]), y, vocab_start=0, collectives=collectives
            )

    on_ranks(SPLITS["two"], backend.xp, rank)


def test_a_gap_between_shards_is_reported(backend):
    """Shards that leave a class out (one rank holding classes [1, 38)): a label of that class names
    the gap, not a range that holds it."""
    if not backend.eager:
        pytest.skip("values are checked on eager host arrays only")
    logits, labels, _ = problem("plain", seed=7)
    labels[4] = 0
    with pytest.raises(
        ValueError, match=r"labels contains 0, a class that no rank holds: .* must cover \[0, 37\)"
    ):
        vocab_parallel_cross_entropy(
            backend.asarray(logits), backend.asarray(labels), vocab_start=1, collectives=OneRank()
        )


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"vocab_start": 1.5}, TypeError, "vocab_start must be an int or a 0-d integer array, got float"),
        ({"vocab_start": True}, TypeError, "vocab_start must be an int or a 0-d integer array, got bool"),
        ({"vocab_start": -1}, ValueError, "vocab_start must be non-negative, got -1"),
        ({"collectives": object()}, TypeError, "collectives must have methods max(x) and sum(x)"),
        ({"ignore_index": "x"}, TypeError, "ignore_index must be an int"),
    ],
)
def test_bad_arguments_name_the_argument(backend, kwargs, error, message):
    logits, labels, _ = problem("plain")
    call = {"vocab_start": 0, "collectives": OneRank(), **kwargs}
    with pytest.raises(error, match=re_escape(message)):
        vocab_parallel_cross_entropy(backend.asarray(logits), backend.asarray(labels), **call)


def test_bad_shapes_name_the_argument(backend):
    logits, labels, _ = problem("plain")
    z, y = backend.asarray(logits), backend.asarray(labels)
    with pytest.raises(ValueError, match="labels has shape"):
        vocab_parallel_cross_entropy(z, y[:3], vocab_start=0, collectives=OneRank())
    with pytest.raises(TypeError, match="local_logits must have a real floating dtype"):
        vocab_parallel_cross_entropy(y[:, None], y, vocab_start=0, collectives=OneRank())
    with pytest.raises(TypeError, match="vocab_start must be an int or a 0-d integer array"):
        vocab_parallel_cross_entropy(z, y, vocab_start=y, collectives=OneRank())
    with pytest.raises(ValueError, match=re_escape("local_weight must have shape (classes, 4)")):
        vocab_parallel_linear_cross_entropy(
            backend.asarray(np.ones((ROWS, 4))), z, y, vocab_start=0, collectives=OneRank()
        )
    if backend.eager:
        with pytest.raises(ValueError, match=r"labels contains -[0-9]+; class indices must be non-negative"):
            vocab_parallel_cross_entropy(z, y - 7, vocab_start=0, collectives=OneRank())


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


# --- torch.distributed over gloo ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_workers(script: str, ranks: int, out: Path, *args: str, env: dict[str, str] | None = None) -> None:
    """Run ``script`` as ``ranks`` processes (rank and world size as arguments), with this
    process's ``sys.path`` (arrayloss, the conformance helpers)."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), **(env or {})}
    port = str(free_port())
    processes = [
        subprocess.Popen(
            [sys.executable, str(HERE / script), str(rank), str(ranks), port, str(out), *args],
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(ranks)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    for rank, (p, text) in enumerate(zip(processes, outputs, strict=True)):
        assert p.returncode == 0, f"rank {rank} failed:\n{text}"


@pytest.mark.backend("torch")
def test_torch_distributed_gloo_two_processes(tmp_path):
    """Values and ``.backward()`` gradients of each rank against the single-process loss."""
    run_workers("distributed_torch_worker.py", 2, tmp_path)
    results = [dict(np.load(tmp_path / f"rank{r}.npz")) for r in range(2)]
    cases = json.loads((tmp_path / "cases.json").read_text())
    bounds = (0, 20, CLASSES)
    for name in cases:
        logits, labels, options = problem(cases[name]["case"], seed=7)
        reduction, dtype = cases[name]["reduction"], cases[name]["dtype"]
        tolerance = {"rtol": 1e-10, "atol": 1e-12} if dtype == "float64" else {"rtol": 2e-5, "atol": 2e-6}
        expected = ref.sparse_ce(logits, labels, reduction=reduction, **options)
        _, grad = al.value_and_grad(al.sparse_softmax_cross_entropy)(
            logits, labels, reduction=reduction, **options
        )
        for r, got in enumerate(results):
            np.testing.assert_allclose(got[f"{name}/value"], expected, **tolerance)
            np.testing.assert_allclose(got[f"{name}/grad"], grad[:, bounds[r] : bounds[r + 1]], **tolerance)
    # the linear variant: hidden's gradient in full on both ranks, the weight's local slices
    rng = np.random.default_rng(8)
    hidden, weight = rng.normal(size=(ROWS, FEATURES)), rng.normal(size=(CLASSES, FEATURES))
    bias = rng.normal(size=CLASSES)
    _, labels, options = problem("everything", seed=8)
    expected, (d_hidden, d_weight, d_bias) = al.value_and_grad(al.linear_cross_entropy)(
        hidden, weight, labels, bias=bias, reduction="mean", **options
    )
    for r, got in enumerate(results):
        piece = slice(bounds[r], bounds[r + 1])
        np.testing.assert_allclose(got["linear/value"], expected, rtol=1e-10)
        np.testing.assert_allclose(got["linear/hidden"], d_hidden, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(got["linear/weight"], d_weight[piece], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(got["linear/bias"], d_bias[piece], rtol=1e-10, atol=1e-12)


@pytest.mark.backend("torch")
def test_torch_collectives_need_an_initialised_group():
    with pytest.raises(RuntimeError, match=r"needs an initialised torch\.distributed process group"):
        torch_collectives()


# --- JAX shard_map on 8 host devices --------------------------------------------------------------


@pytest.mark.backend("jax")
def test_jax_shard_map_on_eight_devices(tmp_path):
    """Value and gradient against the single-device loss; the compiled collectives are per-row. Also
    ``linear_cross_entropy`` and ``ctc_loss`` with the batch split over the devices."""
    environment = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    run_workers("distributed_jax_worker.py", 1, tmp_path, env=environment)
    report = json.loads((tmp_path / "report.json").read_text())
    for name, case in report["cases"].items():
        assert case["value_error"] <= 1e-10 * max(1.0, case["value"]), name
        assert case["grad_error"] <= 1e-10, name
        assert case["all_gathers"] == 0, name
        assert case["largest_all_reduce"] <= case["per_row_limit"], name
    # Data parallel: the custom VJPs of linear_cross_entropy and ctc_loss sum the replicated weight's
    # gradient over the shards, as JAX's autodiff does.
    for name, case in report["data_parallel"].items():
        assert case["value_error"] <= 1e-10 * max(1.0, case["value"]), name
        assert case["grad_error"] <= 1e-10, name


def test_a_numpy_integer_vocab_start_is_an_int(backend):
    logits, labels, _ = problem("plain", seed=9)
    dtype = backend.float_dtypes[-1]
    z, y = backend.asarray(logits, dtype), backend.asarray(labels)
    out = vocab_parallel_cross_entropy(z, y, vocab_start=np.int64(0), collectives=OneRank())
    backend.assert_close(out, ref.sparse_ce(logits, labels), dtype=dtype)


@pytest.mark.backend("jax")
def test_jax_grad_under_jit_on_one_device(backend):
    """``jax.jit(jax.grad(...))`` takes the rule (``custom_vjp``) with one rank's collectives
    (``backend``: JAX in float64)."""
    jax = pytest.importorskip("jax")
    logits, labels, options = problem("everything", seed=10)
    f = al.value_and_grad(al.sparse_softmax_cross_entropy)
    _, expected = f(logits, labels, reduction="mean", **options)
    given = {k: jax.numpy.asarray(v) if isinstance(v, np.ndarray) else v for k, v in options.items()}

    def loss(z: Any) -> Any:
        return vocab_parallel_cross_entropy(
            z, jax.numpy.asarray(labels), vocab_start=0, collectives=OneRank(), reduction="mean", **given
        )

    grad = jax.jit(jax.grad(loss))(jax.numpy.asarray(logits))
    np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-10, atol=1e-12)


@st.composite
def sharded_problems(draw: Any) -> dict[str, Any]:
    """Rows (maybe none), classes split into 1-3 shards of any widths, and options."""
    classes = draw(st.integers(1, 12))
    ranks = draw(st.integers(1, min(3, classes)))
    cuts: list[int] = []
    if ranks > 1:
        interior = st.lists(st.integers(1, classes - 1), min_size=ranks - 1, max_size=ranks - 1, unique=True)
        cuts = sorted(draw(interior))
    rows = draw(st.integers(0, 5))
    seed = draw(st.integers(0, 2**16))
    options = {
        "label_smoothing": draw(st.sampled_from([0.0, 0.3])),
        "z_loss": draw(st.sampled_from([0.0, 0.1])),
        "reduction": draw(st.sampled_from(["none", "sum", "mean"])),
    }
    return {"classes": classes, "bounds": (0, *cuts, classes), "rows": rows, "seed": seed, "options": options}


@backend_property(case=sharded_problems())
def test_any_split_gives_the_full_loss_and_gradient(backend: Any, case: dict[str, Any]) -> None:
    rng = np.random.default_rng(case["seed"])
    logits = rng.normal(size=(case["rows"], case["classes"])) * 5.0
    labels = rng.integers(0, case["classes"], size=case["rows"])
    options = case["options"]
    value, grad = al.value_and_grad(al.sparse_softmax_cross_entropy)(logits, labels, **options)
    np.testing.assert_allclose(value, ref.sparse_ce(logits, labels, **options), rtol=1e-10, atol=1e-12)
    dtype = backend.float_dtypes[-1]
    f = al.value_and_grad(vocab_parallel_cross_entropy)

    def rank(r: int, start: int, stop: int, collectives: Collectives) -> Any:
        shard, y = backend.asarray(logits[:, start:stop], dtype), backend.asarray(labels)
        return f(shard, y, vocab_start=start, collectives=collectives, **options)

    bounds = case["bounds"]
    for r, (out, local) in enumerate(on_ranks(bounds, backend.xp, rank)):
        backend.assert_close(out, value, dtype=dtype)
        backend.assert_close(local, grad[:, bounds[r] : bounds[r + 1]], dtype=dtype)


@pytest.mark.backend("jax")
def test_jax_gradients_of_the_example_weights_too(backend):
    """``jax.grad`` with respect to ``weights`` (the custom VJP's perturbed constants) on one device
    (``backend``: JAX in float64)."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    rng = np.random.default_rng(11)
    logits, labels = jnp.asarray(rng.normal(size=(5, 7))), jnp.asarray(rng.integers(0, 7, 5))
    hidden, weight = jnp.asarray(rng.normal(size=(5, 3))), jnp.asarray(rng.normal(size=(7, 3)))
    weights = jnp.asarray(rng.uniform(0.1, 2.0, 5))
    one = {"vocab_start": 0, "collectives": OneRank()}

    def ours(z: Any, w: Any) -> Any:
        return vocab_parallel_cross_entropy(
            z, labels, weights=w, reduction="mean", label_smoothing=0.1, **one
        )

    def theirs(z: Any, w: Any) -> Any:
        return al.sparse_softmax_cross_entropy(z, labels, weights=w, reduction="mean", label_smoothing=0.1)

    for got, expected in zip(
        jax.jit(jax.grad(ours, argnums=(0, 1)))(logits, weights),
        jax.grad(theirs, argnums=(0, 1))(logits, weights),
        strict=True,
    ):
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-10, atol=1e-12)

    def ours_linear(h: Any, v: Any, w: Any) -> Any:
        return vocab_parallel_linear_cross_entropy(
            h, v, labels, weights=w, reduction="sum", chunk_size=2, **one
        )

    def theirs_linear(h: Any, v: Any, w: Any) -> Any:
        return al.linear_cross_entropy(h, v, labels, weights=w, reduction="sum", chunk_size=2)

    for got, expected in zip(
        jax.jit(jax.grad(ours_linear, argnums=(0, 1, 2)))(hidden, weight, weights),
        jax.grad(theirs_linear, argnums=(0, 1, 2))(hidden, weight, weights),
        strict=True,
    ):
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-10, atol=1e-12)
