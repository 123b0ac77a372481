"""Dask: every task stays within the blocks of the inputs.

Logits blocked along their class axis must never give a task that holds a block of rows
across every class (such as the comparison of the labels with a one-block ``arange(C)``,
hundreds of MB per task at a language model's vocabulary). Each call is built under a
scheduler that refuses to compute, then computed by the synchronous scheduler with a
callback that records the shape of every task's result. Values and gradients are compared
with the float64 reference (gradients: its central finite differences); the gradient keeps
the blocks of its input. ``linear_cross_entropy``'s chunks are Dask's row blocks. A
``distributed.LocalCluster`` with a memory limit per worker computes a larger call without
spilling to disk.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import reference as ref
from test_grad import GRAD_TOLERANCE, no_compute

import arrayloss as al
from arrayloss._lib._settings import settings

pytestmark = pytest.mark.backend("dask")

ROWS, CLASSES, FEATURES = 12, 10, 5  # and sequences of 3 x 4 steps: CLASSES is no other size
ROW_BLOCK, CLASS_BLOCK = 4, 3  # classes in blocks of 3, 3, 3, 1
EVERYTHING: dict[str, Any] = {"ignore_index": 2, "label_smoothing": 0.1, "z_loss": 0.01}


@contextlib.contextmanager
def task_shapes() -> Iterator[list[tuple[int, ...]]]:
    """The shapes of the NumPy arrays that the tasks computed inside return (the final gathering of
    the results into one array left out)."""
    callbacks = importlib.import_module("dask.callbacks")
    shapes: list[tuple[int, ...]] = []

    class Record(callbacks.Callback):
        def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
            name = key[0] if isinstance(key, tuple) else key
            if isinstance(result, np.ndarray) and not str(name).startswith("finalize"):
                shapes.append(result.shape)

    dask = importlib.import_module("dask")
    with Record(), dask.config.set(scheduler="sync"):
        yield shapes


def computed(*arrays: Any) -> tuple[list[np.ndarray], list[tuple[int, ...]]]:
    """The values of the Dask ``arrays`` (float64) and the shapes of every task's result."""
    dask = importlib.import_module("dask")
    with task_shapes() as shapes:
        values = dask.compute(*arrays)
    return [np.asarray(v, dtype=np.float64) for v in values], shapes


def assert_within_class_blocks(shapes: list[tuple[int, ...]]) -> None:
    """No task returned an array (of two axes or more) across every class: ``CLASSES`` is no other
    size of the problems here."""
    assert shapes, "no task ran"
    whole = sorted({s for s in shapes if len(s) >= 2 and CLASSES in s})
    assert not whole, f"tasks holding every class: {whole}"


def blocked(backend, values: np.ndarray, chunks: tuple[int, ...]) -> Any:
    return backend.module.from_array(values, chunks=chunks)


def check_gradient(got: np.ndarray, expected: np.ndarray) -> None:
    rtol, atol = GRAD_TOLERANCE["float64"]
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol)


def finite_differences(f: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
    return ref.numeric_gradient(lambda z: float(np.sum(f(z))), x, 1e-5, relative=True)


def sparse_problem(seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(ROWS, CLASSES))
    labels = rng.integers(0, CLASSES, size=ROWS)
    weights = rng.uniform(0.0, 2.0, size=ROWS)
    weights[1] = 0.0
    return logits, labels, {"weights": weights, "class_weights": rng.uniform(0.5, 1.5, size=CLASSES)}


@pytest.mark.parametrize("options", [{}, EVERYTHING], ids=["plain", "everything"])
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_sparse_value_and_gradient_stay_within_class_blocks(backend, reduction, options):
    logits, labels, weights = sparse_problem()
    z = blocked(backend, logits, (ROW_BLOCK, CLASS_BLOCK))
    arrays = {k: blocked(backend, v, (ROW_BLOCK if v.size == ROWS else CLASSES,)) for k, v in weights.items()}
    with no_compute(backend):
        value, grad = al.value_and_grad(al.sparse_softmax_cross_entropy)(
            z, blocked(backend, labels, (ROW_BLOCK,)), reduction=reduction, **options, **arrays
        )
    assert grad.chunks == z.chunks
    (got_value, got_grad), shapes = computed(value, grad)
    assert_within_class_blocks(shapes)

    def reference(x: np.ndarray) -> np.ndarray:
        return ref.sparse_ce(x, labels, reduction=reduction, **options, **weights)

    np.testing.assert_allclose(got_value, reference(logits), rtol=1e-10, atol=1e-12)
    check_gradient(got_grad, finite_differences(reference, logits))


def test_sparse_class_axis_first_stays_within_class_blocks(backend):
    logits, labels, _ = sparse_problem(1)
    z = blocked(backend, logits.T.copy(), (CLASS_BLOCK, ROW_BLOCK))
    with no_compute(backend):
        value, grad = al.value_and_grad(al.sparse_softmax_cross_entropy)(
            z, blocked(backend, labels, (ROW_BLOCK,)), axis=0
        )
    assert grad.chunks == z.chunks
    (got_value, got_grad), shapes = computed(value, grad)
    assert_within_class_blocks(shapes)
    np.testing.assert_allclose(got_value, ref.sparse_ce(logits, labels), rtol=1e-10, atol=1e-12)
    expected = finite_differences(lambda x: ref.sparse_ce(x, labels), logits)
    check_gradient(got_grad, expected.T)


def test_gradient_keeps_the_logits_blocks_whatever_the_labels_blocks(backend):
    logits, labels, weights = sparse_problem(6)
    z = blocked(backend, logits, (ROW_BLOCK, CLASS_BLOCK))
    with no_compute(backend):
        value, grad = al.value_and_grad(al.sparse_softmax_cross_entropy)(
            z, blocked(backend, labels, (6,)), weights=blocked(backend, weights["weights"], (5,))
        )
    assert grad.chunks == z.chunks
    (_, got_grad), _ = computed(value, grad)

    def reference(x: np.ndarray) -> np.ndarray:
        return ref.sparse_ce(x, labels, weights=weights["weights"])

    check_gradient(got_grad, finite_differences(reference, logits))


def test_dense_value_and_gradient_stay_within_class_blocks(backend):
    rng = np.random.default_rng(2)
    logits = rng.normal(scale=2.0, size=(ROWS, CLASSES))
    targets = rng.dirichlet(np.ones(CLASSES), size=ROWS)
    z = blocked(backend, logits, (ROW_BLOCK, CLASS_BLOCK))
    with no_compute(backend):
        value, grad = al.value_and_grad(al.softmax_cross_entropy)(
            z, blocked(backend, targets, (ROW_BLOCK, CLASS_BLOCK)), label_smoothing=0.1, reduction="sum"
        )
    assert grad.chunks == z.chunks
    (got_value, got_grad), shapes = computed(value, grad)
    assert_within_class_blocks(shapes)

    def reference(x: np.ndarray) -> np.ndarray:
        return ref.dense_ce(x, targets, label_smoothing=0.1, reduction="sum")

    np.testing.assert_allclose(got_value, reference(logits), rtol=1e-10, atol=1e-12)
    check_gradient(got_grad, finite_differences(reference, logits))


@pytest.mark.parametrize("average_across_batch", [True, False])
def test_sequence_loss_stays_within_class_blocks(backend, average_across_batch):
    rng = np.random.default_rng(3)
    batch, time = 3, 4
    logits = rng.normal(scale=2.0, size=(batch, time, CLASSES))
    targets = rng.integers(0, CLASSES, size=(batch, time))
    weights = (rng.uniform(size=(batch, time)) > 0.3).astype(np.float64)
    z = blocked(backend, logits, (2, 2, CLASS_BLOCK))
    with no_compute(backend):
        value, grad = al.value_and_grad(al.sequence_loss)(
            z,
            blocked(backend, targets, (2, 2)),
            blocked(backend, weights, (2, 2)),
            average_across_batch=average_across_batch,
        )
    assert grad.chunks == z.chunks
    (got_value, got_grad), shapes = computed(value, grad)
    assert_within_class_blocks(shapes)

    def reference(x: np.ndarray) -> np.ndarray:
        return ref.tfa_sequence_loss(x, targets, weights, average_across_batch=average_across_batch)

    np.testing.assert_allclose(got_value, reference(logits), rtol=1e-10, atol=1e-12)
    check_gradient(got_grad, finite_differences(reference, logits))


def linear_problem(seed: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(ROWS, FEATURES)),
        rng.normal(size=(CLASSES, FEATURES)),
        rng.integers(0, CLASSES, size=ROWS),
    )


@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("chunk_bytes", ["tiny", "default"])
def test_linear_chunks_are_dask_row_blocks(backend, reduction, chunk_bytes):
    """The logits of each task are one row block of ``hidden`` by one class block of ``weight``,
    whatever the chunk rule for eager arrays (``tiny``: one row per chunk) would pick."""
    hidden, weight, labels = linear_problem()
    h = blocked(backend, hidden, (ROW_BLOCK, FEATURES))
    w = blocked(backend, weight, (CLASS_BLOCK, FEATURES))
    y = blocked(backend, labels, (ROW_BLOCK,))
    changes = {"linear_chunk_bytes": 1} if chunk_bytes == "tiny" else {}
    with settings(**changes), no_compute(backend):
        value, (d_hidden, d_weight) = al.value_and_grad(al.linear_cross_entropy)(h, w, y, reduction=reduction)
        plain = al.linear_cross_entropy(h, w, y, reduction=reduction)
        aligned = al.linear_cross_entropy(h, w, y, reduction=reduction, chunk_size=ROW_BLOCK)
    assert d_hidden.chunks == h.chunks and d_weight.chunks == w.chunks
    # No more tasks than a loop over chunks of exactly Dask's row blocks.
    assert len(plain.__dask_graph__()) <= len(aligned.__dask_graph__())
    (got_value, got_hidden, got_weight, got_plain), shapes = computed(value, d_hidden, d_weight, plain)
    assert_within_class_blocks(shapes)
    # The blocks of logits (rows by a class block; weight.T's blocks have FEATURES rows): Dask's row blocks.
    logit_rows = {s[0] for s in shapes if len(s) == 2 and s[1] == CLASS_BLOCK and s[0] != FEATURES}
    assert logit_rows == {ROW_BLOCK}, logit_rows
    np.testing.assert_allclose(got_plain, got_value, rtol=1e-12)

    def reference(x: np.ndarray, v: np.ndarray) -> np.ndarray:
        return ref.sparse_ce(x @ v.T, labels, reduction=reduction)

    np.testing.assert_allclose(got_value, reference(hidden, weight), rtol=1e-10, atol=1e-12)
    check_gradient(got_hidden, finite_differences(lambda x: reference(x, weight), hidden))
    check_gradient(got_weight, finite_differences(lambda v: reference(hidden, v), weight))


# A distributed cluster: a call of rows x classes in blocks of a quarter of each, on two workers whose
# memory (at the start of spilling, 60% of the limit) holds the call's blocks but spills its tasks of rows
# across every class (a comparison with a one-block class range and the selection it makes): 100-150 MB
# were spilled at 125-200 MiB per worker before the class ranges followed the logits' blocks.
CLUSTER_ROWS, CLUSTER_CLASSES = 1024, 20000
CLUSTER_BLOCKS = (256, 5000)
WORKER_MEMORY = "160 MiB"


@pytest.fixture(scope="module")
def cluster_client(backend) -> Iterator[Any]:
    distributed = pytest.importorskip("distributed")
    dask = importlib.import_module("dask")
    # Spill by the bytes of the stored results only (``target``): the process's memory is the test
    # process's, shared by both workers (processes=False) and by everything else the tests hold.
    memory = {
        "distributed.worker.memory.target": 0.6,
        "distributed.worker.memory.spill": False,
        "distributed.worker.memory.pause": False,
        "distributed.worker.memory.terminate": False,
    }
    with (
        dask.config.set(memory),
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=False,
            memory_limit=WORKER_MEMORY,
            dashboard_address=":0",  # the HTTP server on a free port: the default, 8787, may be taken
            silence_logs=logging.ERROR,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def spilled_bytes(client: Any) -> int:
    """Bytes that the cluster's workers have written to disk so far."""
    workers = client.cluster.workers.values()
    return sum(int(worker.data.cumulative_metrics["disk-write", "bytes"]) for worker in workers)


def test_cluster_value_and_gradient_without_spilling(backend, cluster_client):
    dask = importlib.import_module("dask")
    distributed = importlib.import_module("distributed")
    # Made by Dask (NumPy logits would be sent inside the graph); their values computed here, not on the
    # cluster, for the NumPy reference.
    rng = backend.module.random.default_rng(5)
    z = 3.0 * rng.standard_normal((CLUSTER_ROWS, CLUSTER_CLASSES), chunks=CLUSTER_BLOCKS, dtype=np.float32)
    y = rng.integers(0, CLUSTER_CLASSES, size=CLUSTER_ROWS, chunks=CLUSTER_BLOCKS[:1])
    logits, labels = dask.compute(z, y, scheduler="sync")
    with no_compute(backend):
        sparse = al.value_and_grad(al.sparse_softmax_cross_entropy)(z, y, reduction="mean")
        steps = al.value_and_grad(al.sequence_loss)(z[None, ...], y[None, ...], average_across_batch=False)
    assert sparse[1].chunks == z.chunks and steps[1].chunks == ((1,), *z.chunks)
    got = []
    for value, grad in (sparse, steps):  # one call at a time: the workers hold the gradient's blocks
        before = spilled_bytes(cluster_client)
        # Kept on the workers in blocks: gathering a result into one array is a task of its whole size.
        results = cluster_client.persist([value, grad])
        distributed.wait(results)
        assert spilled_bytes(cluster_client) == before, "the workers spilled to disk"
        got.extend(np.asarray(r.compute()) for r in results)
        del results
    got_value, got_grad, got_steps, got_steps_grad = got

    # The plain float64 composition, in NumPy.
    x = logits.astype(np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    exps = np.exp(shifted)
    totals = exps.sum(axis=-1, keepdims=True)
    rows = np.arange(CLUSTER_ROWS)
    expected_losses = np.log(totals[:, 0]) - shifted[rows, labels]
    expected_grad = exps / totals
    expected_grad[rows, labels] -= 1.0
    expected_grad /= CLUSTER_ROWS
    assert got_value.dtype == np.float32 and got_grad.dtype == np.float32
    np.testing.assert_allclose(got_value, expected_losses.mean(), rtol=2e-5)
    np.testing.assert_allclose(got_grad, expected_grad, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(got_steps, [expected_losses.mean()], rtol=2e-5)
    np.testing.assert_allclose(got_steps_grad[0], expected_grad, rtol=1e-4, atol=1e-9)


# Rows of which a whole block is empty: the first block of 3 rows filtered out by boolean indexing (block
# sizes unknown), or the kept rows in blocks of known sizes, one of them 0. Dask's own maximum fails on
# such a block at compute() ("zero-size array to reduction operation maximum").
KEPT = np.asarray([False, False, False, True, True, False, True, True])
EMPTY_BLOCK_CLASSES, EMPTY_BLOCK_FEATURES = 5, 3


def with_an_empty_row_block(backend, values: np.ndarray, emptied: str, class_block: int) -> Any:
    """``values[KEPT]`` as a Dask array whose blocks of rows include an empty one, its classes (if any) in
    blocks of ``class_block``."""
    other = tuple(
        (class_block, n - class_block) if n == EMPTY_BLOCK_CLASSES > class_block else (n,)
        for n in values.shape[1:]
    )
    if emptied == "boolean":
        rows = blocked(backend, values, ((3, 3, 2), *other))
        out = rows[blocked(backend, KEPT, ((3, 3, 2),))]
        assert np.isnan(out.shape[0])
        return out
    kept = values[KEPT]
    return blocked(backend, kept, ((2, 0, 2), *other))


def softmax_rows(z: np.ndarray) -> np.ndarray:
    exps = np.exp(z - z.max(axis=-1, keepdims=True))
    return exps / exps.sum(axis=-1, keepdims=True)


def log_softmax_rows(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def reduced(losses: np.ndarray, grad_rows: np.ndarray, reduction: str) -> tuple[np.ndarray, np.ndarray]:
    """The reduced losses and the gradient of their reduction, from each row's loss and gradient."""
    if reduction == "mean":
        return losses.mean(), grad_rows / losses.shape[0]
    return losses, grad_rows  # "none": the gradient of their sum


@pytest.mark.parametrize("class_block", [EMPTY_BLOCK_CLASSES, 3], ids=["one-class-block", "class-blocks"])
@pytest.mark.parametrize("emptied", ["boolean", "known"])
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_losses_with_an_empty_row_block(backend, emptied, class_block, reduction):
    """Values and gradients of the losses built on the rows' maximum, against the plain NumPy formulas
    on the kept rows."""
    rng = np.random.default_rng(7)
    logits = rng.normal(scale=2.0, size=(KEPT.size, EMPTY_BLOCK_CLASSES))
    labels = rng.integers(0, EMPTY_BLOCK_CLASSES, size=KEPT.size)
    targets = rng.dirichlet(np.ones(EMPTY_BLOCK_CLASSES), size=KEPT.size)
    hidden = rng.normal(size=(KEPT.size, EMPTY_BLOCK_FEATURES))
    weight = rng.normal(size=(EMPTY_BLOCK_CLASSES, EMPTY_BLOCK_FEATURES))

    def rows(values: np.ndarray) -> Any:
        return with_an_empty_row_block(backend, values, emptied, class_block)

    with no_compute(backend):
        sparse = al.value_and_grad(al.sparse_softmax_cross_entropy)(
            rows(logits), rows(labels), reduction=reduction
        )
        dense = al.value_and_grad(al.softmax_cross_entropy)(rows(logits), rows(targets), reduction=reduction)
        w = blocked(backend, weight, (class_block, EMPTY_BLOCK_FEATURES))
        linear_value, (d_hidden, d_weight) = al.value_and_grad(al.linear_cross_entropy)(
            rows(hidden), w, rows(labels), reduction=reduction
        )
    got = computed(*sparse, *dense, linear_value, d_hidden, d_weight)[0]

    z, y, t, h = logits[KEPT], labels[KEPT], targets[KEPT], hidden[KEPT]
    one_hot = np.eye(EMPTY_BLOCK_CLASSES)[y]
    log_probs = log_softmax_rows(z)
    sparse_expected = reduced(-log_probs[np.arange(y.size), y], softmax_rows(z) - one_hot, reduction)
    dense_expected = reduced(-(t * log_probs).sum(axis=-1), softmax_rows(z) - t, reduction)
    linear_logits = h @ weight.T
    linear_loss, d_logits = reduced(
        -log_softmax_rows(linear_logits)[np.arange(y.size), y],
        softmax_rows(linear_logits) - one_hot,
        reduction,
    )
    expected = [*sparse_expected, *dense_expected, linear_loss, d_logits @ weight, d_logits.T @ h]
    for name, got_one, want in zip(
        ["sparse", "d_sparse", "dense", "d_dense", "linear", "d_hidden", "d_weight"],
        got,
        expected,
        strict=True,
    ):
        np.testing.assert_allclose(got_one, want, rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("class_block", [EMPTY_BLOCK_CLASSES, 3], ids=["one-class-block", "class-blocks"])
@pytest.mark.parametrize("emptied", ["boolean", "known"])
def test_logsumexp_with_an_empty_row_block(backend, emptied, class_block):
    logits = np.random.default_rng(8).normal(scale=2.0, size=(KEPT.size, EMPTY_BLOCK_CLASSES))
    z = with_an_empty_row_block(backend, logits, emptied, class_block)
    with no_compute(backend):
        lse, log_probs = al.logsumexp(z), al.log_softmax(z)
    (got_lse, got_log_probs), _ = computed(lse, log_probs)
    kept = logits[KEPT]
    np.testing.assert_allclose(got_lse, np.log(np.exp(kept).sum(axis=-1)), rtol=1e-12)
    np.testing.assert_allclose(got_log_probs, log_softmax_rows(kept), rtol=1e-12, atol=1e-14)
