"""Row chunking gives the numbers of the one-shot computation, on every backend.

``chunk_size`` of 1, of a size that does not divide the number of rows, of exactly
the rows and of more than the rows; the automatic rule forced to block (tiny blocks)
and forced to the plain path (huge blocks); every option of the sparse cross entropy;
the sequence loss (which shares the per-example terms); gradients against central
finite differences of the float64 reference.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import reference as ref
from conftest import repeated

import arrayloss as al
from arrayloss._lib._settings import settings

BATCH = (4, 5)  # 20 rows
CLASSES = 6
CHUNKS = [repeated(1), 3, 20, 1000, None]
OPTIONS: dict[str, dict[str, Any]] = {
    "plain": {},
    "everything": {"ignore_index": 2, "label_smoothing": 0.1, "z_loss": 0.01},
}


def inputs(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(*BATCH, CLASSES))
    labels = rng.integers(0, CLASSES, size=BATCH)
    weights = rng.uniform(0.0, 2.0, size=BATCH)
    weights[0, 1] = 0.0
    class_weights = rng.uniform(0.5, 1.5, size=CLASSES)
    return logits, labels, weights, class_weights


@pytest.fixture(params=["tiny", "huge"])
def block_bytes(request: pytest.FixtureRequest) -> Iterator[str]:
    """The automatic block size: ``tiny`` gives one-row blocks (eager host arrays), ``huge`` one block."""
    with settings(block_bytes=1 if request.param == "tiny" else 1 << 40):
        yield str(request.param)


@pytest.mark.parametrize("chunk_size", CHUNKS)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("case", sorted(OPTIONS))
def test_sparse_chunk_sizes_match_reference(backend, chunk_size, reduction, case):
    logits, labels, weights, class_weights = inputs()
    options = {"reduction": reduction, **OPTIONS[case]}
    expected = ref.sparse_ce(logits, labels, weights=weights, class_weights=class_weights, **options)
    for dtype in ("float32", "float64"):
        if dtype not in backend.float_dtypes:
            continue
        out = al.sparse_softmax_cross_entropy(
            backend.asarray(logits, dtype),
            backend.asarray(labels),
            weights=backend.asarray(weights, dtype),
            class_weights=backend.asarray(class_weights, dtype),
            chunk_size=chunk_size,
            **options,
        )
        backend.assert_close(out, expected, dtype=dtype, scale=10.0 if dtype == "float32" else 1.0)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_chunking_any_class_axis(backend, block_bytes, axis):
    logits, labels, _, _ = inputs(1)
    moved = np.moveaxis(logits, -1, axis)
    out = al.sparse_softmax_cross_entropy(
        backend.asarray(moved), backend.asarray(labels), axis=axis, label_smoothing=0.2
    )
    backend.assert_close(
        out, ref.sparse_ce(moved, labels, axis=axis, label_smoothing=0.2), dtype=backend.float_dtypes[-1]
    )


def test_automatic_blocks_match_reference(backend, block_bytes):
    logits, labels, weights, class_weights = inputs(2)
    options = {"ignore_index": 0, "label_smoothing": 0.3, "z_loss": 0.02, "reduction": "mean"}
    out = al.sparse_softmax_cross_entropy(
        backend.asarray(logits),
        backend.asarray(labels),
        weights=backend.asarray(weights),
        class_weights=backend.asarray(class_weights),
        **options,
    )
    expected = ref.sparse_ce(logits, labels, weights=weights, class_weights=class_weights, **options)
    backend.assert_close(out, expected, dtype=backend.float_dtypes[-1])


def test_automatic_blocks_half_precision(backend, block_bytes):
    half = [d for d in ("float16", "bfloat16") if d in backend.float_dtypes]
    if not half:
        pytest.skip(f"{backend.name} has no half precision on {backend.device}")
    logits, labels, _, _ = inputs(3)
    for dtype in half:
        x = backend.asarray(logits, dtype)
        out = al.sparse_softmax_cross_entropy(x, backend.asarray(labels))
        backend.assert_close(out, ref.sparse_ce(backend.to_numpy(x), labels), dtype=dtype)


def test_sequence_loss_blocks_match_reference(backend, block_bytes):
    logits, labels, weights, _ = inputs(4)
    out = al.sequence_loss(backend.asarray(logits), backend.asarray(labels), backend.asarray(weights))
    expected = ref.tfa_sequence_loss(logits, labels, weights)
    backend.assert_close(out, expected, dtype=backend.float_dtypes[-1])


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_dense_blocks_match_reference(backend, block_bytes, label_smoothing):
    """Dense targets by blocks: rows of finite logits by the one-exponential decomposition, a row
    with -inf where the target is 0 (0 * -inf) and one with -inf where it is not by the masked formula."""
    logits, _, weights, _ = inputs(6)
    targets = np.random.default_rng(6).dirichlet(np.ones(CLASSES), size=BATCH)
    targets[0, 0] = np.eye(CLASSES)[1]
    logits[0, 0, 2] = -np.inf  # target 0 there: contributes 0
    logits[1, 3, 0] = -np.inf  # target > 0 there: the loss is +inf
    if label_smoothing:  # every smoothed target is positive: drop the +inf row from the comparison
        logits[1, 3, 0] = 0.0
    for reduction in ("none", "sum", "mean"):
        options = {"label_smoothing": label_smoothing, "reduction": reduction}
        expected = ref.dense_ce(logits, targets, weights=weights, **options)
        out = al.softmax_cross_entropy(
            backend.asarray(logits), backend.asarray(targets), weights=backend.asarray(weights), **options
        )
        if reduction == "none":
            backend.assert_close(out, expected, dtype=backend.float_dtypes[-1])
        elif not label_smoothing:
            assert np.isposinf(backend.to_numpy(out))
        else:
            backend.assert_close(out, expected, dtype=backend.float_dtypes[-1])


def test_chunked_empty_batch(backend):
    logits = np.zeros((0, CLASSES))
    labels = np.zeros((0,), dtype=np.int64)
    for chunk_size in (1, 4):
        out = al.sparse_softmax_cross_entropy(
            backend.asarray(logits), backend.asarray(labels), chunk_size=chunk_size
        )
        backend.assert_close(out, np.zeros((0,)), dtype=backend.float_dtypes[-1])


@pytest.mark.parametrize("chunk_size", [repeated(1), 3, None])
def test_value_and_grad_with_chunks_matches_finite_differences(backend, chunk_size):
    if "float64" not in backend.float_dtypes:
        pytest.skip(f"{backend.name} has no float64 on {backend.device}")
    logits, labels, weights, _ = inputs(5)
    options = {"weights": weights, "ignore_index": 1, "label_smoothing": 0.1, "z_loss": 0.01}
    f = al.value_and_grad(al.sparse_softmax_cross_entropy)
    value, grad = f(
        backend.asarray(logits),
        backend.asarray(labels),
        weights=backend.asarray(weights),
        ignore_index=1,
        label_smoothing=0.1,
        z_loss=0.01,
        reduction="mean",
        chunk_size=chunk_size,
    )
    expected = ref.sparse_ce(logits, labels, reduction="mean", **options)
    backend.assert_close(value, expected, dtype="float64")
    numeric = ref.numeric_gradient(lambda z: ref.sparse_ce(z, labels, reduction="mean", **options), logits)
    got = backend.check_result(grad, dtype="float64", shape=logits.shape)
    np.testing.assert_allclose(got, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    ("chunk_size", "error", "message"),
    [(0, ValueError, "chunk_size must be a positive"), (2.5, TypeError, "chunk_size must be an int")],
)
def test_bad_chunk_size_names_it(backend, chunk_size, error, message):
    logits, labels, _, _ = inputs()
    with pytest.raises(error, match=message):
        al.sparse_softmax_cross_entropy(
            backend.asarray(logits), backend.asarray(labels), chunk_size=chunk_size
        )
