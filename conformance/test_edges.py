"""Edges: huge logits, ±inf and NaN, masked garbage, empty batches, half precision.

Every expectation comes from the float64 reference (``reference.py``) applied to the
inputs as the backend holds them (after rounding to the tested dtype).
"""

import numpy as np
import pytest
import reference

import arrayloss as al

# Largest magnitudes each dtype is tested at: the losses stay representable.
MAGNITUDE = {"float64": 1e300, "float32": 1e30, "bfloat16": 1e30, "float16": 6e4}
# Rows of multiples of the magnitude, no label on a -1: every loss, and their sum, fits float16 at 6e4.
HUGE_PATTERN = np.array([[1.0, 1.0, -1.0], [1.0, 0.75, -1.0], [1.0, -1.0, 1.0], [0.75, 1.0, 0.75]])
HUGE_LABELS = np.array([0, 1, 2, 0])
ORDINARY = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [1.0, -1.0, 0.0], [0.0, 3.0, 0.0], [-0.5, 0.5, 1.5]])
LABELS = np.array([0, 2, 1, 1, 2])


def needs(backend, dtype):
    if dtype not in backend.float_dtypes:
        pytest.skip(f"{backend.name} has no {dtype} on {backend.device}")


def held(backend, values, dtype):
    """``values`` as a backend array of ``dtype``, and the float64 NumPy copy of what it holds."""
    x = backend.asarray(values, dtype)
    return x, backend.to_numpy(x)


def row_shifted(z64):
    """``z64`` minus the maximum of each row (exact here: the rows are multiples of one magnitude).

    Cross entropy is invariant to shifting a row of logits; the plain reference on the
    unshifted rows would round lse = M + log 2 to M and return 0 instead of log 2.
    """
    return z64 - z64.max(axis=-1, keepdims=True)


def labels_of(backend, values):
    return backend.asarray(values, "int32")


# ---------------------------------------------------------------- huge logits


@pytest.mark.parametrize("dtype", list(MAGNITUDE))
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_huge_logits_sparse(backend, dtype, reduction, label_smoothing):
    needs(backend, dtype)
    z, z64 = held(backend, MAGNITUDE[dtype] * HUGE_PATTERN, dtype)
    out = al.sparse_softmax_cross_entropy(
        z, labels_of(backend, HUGE_LABELS), reduction=reduction, label_smoothing=label_smoothing
    )
    expected = reference.sparse_ce(
        row_shifted(z64), HUGE_LABELS, reduction=reduction, label_smoothing=label_smoothing
    )
    assert np.all(np.isfinite(expected))
    backend.assert_close(out, expected, dtype=dtype)


@pytest.mark.parametrize("dtype", list(MAGNITUDE))
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_huge_logits_dense(backend, dtype, label_smoothing):
    needs(backend, dtype)
    z, z64 = held(backend, MAGNITUDE[dtype] * HUGE_PATTERN, dtype)
    t, t64 = held(backend, np.eye(3)[HUGE_LABELS], dtype)
    out = al.softmax_cross_entropy(z, t, label_smoothing=label_smoothing)
    expected = reference.dense_ce(row_shifted(z64), t64, label_smoothing=label_smoothing)
    assert np.all(np.isfinite(expected))
    backend.assert_close(out, expected, dtype=dtype)


@pytest.mark.parametrize("dtype", list(MAGNITUDE))
def test_huge_logits_sequences_and_logsumexp(backend, dtype):
    needs(backend, dtype)
    z, z64 = held(backend, MAGNITUDE[dtype] * HUGE_PATTERN.reshape(2, 2, 3), dtype)
    targets = HUGE_LABELS.reshape(2, 2)
    w, w64 = held(backend, np.ones((2, 2)), dtype)
    backend.assert_close(
        al.sequence_loss(z, labels_of(backend, targets), w),
        reference.tfa_sequence_loss(row_shifted(z64), targets, w64),
        dtype=dtype,
    )
    backend.assert_close(
        al.sequence_loss_by_example(z, labels_of(backend, targets), w),
        reference.legacy_sequence_loss_by_example(row_shifted(z64), targets, w64),
        dtype=dtype,
    )
    backend.assert_close(al.logsumexp(z), reference.logsumexp(z64), dtype=dtype)


# ---------------------------------------------------------------- inf and NaN


def with_entries(values, entries):
    out = np.array(values, dtype=np.float64)
    for index, value in entries.items():
        out[index] = value
    return out


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_minus_inf_at_other_classes_is_finite(backend, dtype):
    needs(backend, dtype)
    values = with_entries(ORDINARY, {(0, 2): -np.inf, (1, 0): -np.inf, (1, 1): -np.inf, (3, 2): -np.inf})
    z, z64 = held(backend, values, dtype)
    out = al.sparse_softmax_cross_entropy(z, labels_of(backend, LABELS))
    expected = reference.sparse_ce(z64, LABELS)
    assert np.all(np.isfinite(expected))
    backend.assert_close(out, expected, dtype=dtype)
    # Dense targets with zero probability where the logit is -inf: finite too (no 0 * -inf).
    t, t64 = held(backend, np.eye(3)[LABELS], dtype)
    dense = al.softmax_cross_entropy(z, t)
    backend.assert_close(dense, reference.dense_ce(z64, t64), dtype=dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("label_smoothing", [0.0, 1.0])  # 1.0: the label's term has weight 0, not 0 * inf
def test_minus_inf_at_the_label_is_plus_inf(backend, dtype, reduction, label_smoothing):
    needs(backend, dtype)
    z, z64 = held(backend, with_entries(ORDINARY, {(1, 2): -np.inf}), dtype)
    options = {"reduction": reduction, "label_smoothing": label_smoothing}
    labels = backend.asarray(LABELS, "int64")  # small torch calls with int64 labels go to F.cross_entropy
    out = al.sparse_softmax_cross_entropy(z, labels, **options)
    expected = reference.sparse_ce(z64, LABELS, **options)
    assert np.isposinf(expected).any()
    backend.assert_close(out, expected, dtype=dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("poison", [np.nan, np.inf], ids=["nan", "plus-inf"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_nan_or_inf_in_one_example_stays_in_that_example(backend, dtype, poison, label_smoothing):
    needs(backend, dtype)
    z, z64 = held(backend, with_entries(ORDINARY, {(2, 0): poison}), dtype)
    expected = reference.sparse_ce(z64, LABELS, label_smoothing=label_smoothing)
    assert not np.isfinite(expected[2]) and np.all(np.isfinite(np.delete(expected, 2)))
    out = al.sparse_softmax_cross_entropy(z, labels_of(backend, LABELS), label_smoothing=label_smoothing)
    backend.assert_close(out, expected, dtype=dtype)
    t, t64 = held(backend, np.full((5, 3), 1 / 3), dtype)
    backend.assert_close(al.softmax_cross_entropy(z, t), reference.dense_ce(z64, t64), dtype=dtype)


# Rows 1 and 3 hold garbage; every masking below removes exactly them.
GARBAGE = with_entries(ORDINARY, {(1, 0): np.nan, (3, 1): np.inf, (3, 2): -np.inf})


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("mask", ["weights", "ignore_index", "class_weights"])
@pytest.mark.parametrize("label_dtype", ["int32", "int64"])  # int64: small torch calls go to F.cross_entropy
def test_masked_garbage_never_gives_nan(backend, dtype, reduction, mask, label_dtype):
    needs(backend, dtype)
    z, z64 = held(backend, GARBAGE, dtype)
    labels = LABELS.copy()
    options = {}
    if mask == "weights":
        options["weights"] = np.array([1.0, 0.0, 2.0, 0.0, 0.5])
    elif mask == "ignore_index":
        labels[[1, 3]] = -1
        options["ignore_index"] = -1
    else:
        labels[[1, 3]] = 0  # class 0 has weight 0; rows 0 and 3 keep theirs
        labels[0] = 1
        options["class_weights"] = np.array([0.0, 1.0, 3.0])
    backend_options = {
        k: backend.asarray(v, dtype) if isinstance(v, np.ndarray) else v for k, v in options.items()
    }
    out = al.sparse_softmax_cross_entropy(
        z, backend.asarray(labels, label_dtype), reduction=reduction, **backend_options
    )
    expected = reference.sparse_ce(z64, labels, reduction=reduction, **options)
    assert np.all(np.isfinite(expected))
    backend.assert_close(out, expected, dtype=dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_masked_garbage_dense_and_sequences(backend, dtype):
    needs(backend, dtype)
    z, z64 = held(backend, GARBAGE[:4], dtype)
    weights = np.array([1.0, 0.0, 2.0, 0.0])
    w, w64 = held(backend, weights, dtype)
    t, t64 = held(backend, np.eye(3)[LABELS[:4]], dtype)
    for reduction in ("none", "sum", "mean"):
        out = al.softmax_cross_entropy(z, t, weights=w, reduction=reduction)
        expected = reference.dense_ce(z64, t64, weights=w64, reduction=reduction)
        assert np.all(np.isfinite(expected))
        backend.assert_close(out, expected, dtype=dtype)
    # The same rows as [batch 2, time 2] steps: step (0, 1) and (1, 1) are masked.
    z_seq, z_seq64 = held(backend, GARBAGE[:4].reshape(2, 2, 3), dtype)
    targets = LABELS[:4].reshape(2, 2)
    w_seq, w_seq64 = held(backend, weights.reshape(2, 2), dtype)
    for flags in ({}, {"average_across_batch": False}, {"average_across_timesteps": False}):
        out = al.sequence_loss(z_seq, labels_of(backend, targets), w_seq, **flags)
        expected = reference.tfa_sequence_loss(z_seq64, targets, w_seq64, **flags)
        assert np.all(np.isfinite(expected))
        backend.assert_close(out, expected, dtype=dtype)
    out = al.sequence_loss_by_example(z_seq, labels_of(backend, targets), w_seq)
    expected = reference.legacy_sequence_loss_by_example(z_seq64, targets, w_seq64)
    backend.assert_close(out, expected, dtype=dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_all_masked_mean_is_zero(backend, dtype):
    needs(backend, dtype)
    z = backend.asarray(GARBAGE, dtype)
    zero = np.asarray(0.0)
    masks = {
        "weights": {"weights": backend.asarray(np.zeros(5), dtype)},
        "ignore_index": {"ignore_index": 1, "labels": np.ones(5, dtype=np.int64)},
        "class_weights": {"class_weights": backend.asarray(np.zeros(3), dtype)},
    }
    for options in masks.values():
        labels = labels_of(backend, options.pop("labels", LABELS))
        for reduction in ("sum", "mean"):
            out = al.sparse_softmax_cross_entropy(z, labels, reduction=reduction, **options)
            backend.assert_close(out, zero, dtype=dtype)
    w = backend.asarray(np.zeros(5), dtype)
    t = backend.asarray(np.eye(3)[LABELS], dtype)
    backend.assert_close(al.softmax_cross_entropy(z, t, weights=w, reduction="mean"), zero, dtype=dtype)
    z_seq = backend.asarray(GARBAGE[:4].reshape(2, 2, 3), dtype)
    targets = labels_of(backend, LABELS[:4].reshape(2, 2))
    w_seq = backend.asarray(np.zeros((2, 2)), dtype)
    backend.assert_close(al.sequence_loss(z_seq, targets, w_seq), zero, dtype=dtype)
    by_count = {"average_across_timesteps": False, "average_across_batch": False}
    out = al.sequence_loss(z_seq, targets, w_seq, sum_over_timesteps=True, sum_over_batch=True, **by_count)
    backend.assert_close(out, zero, dtype=dtype)
    backend.assert_close(al.sequence_loss_by_example(z_seq, targets, w_seq), np.zeros(2), dtype=dtype)


# ---------------------------------------------------------------- empty batches


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_empty_batch(backend, dtype):
    needs(backend, dtype)
    z = backend.asarray(np.zeros((0, 3)), dtype)
    labels = labels_of(backend, np.zeros(0, dtype=np.int64))
    t = backend.asarray(np.zeros((0, 3)), dtype)
    w = backend.asarray(np.zeros(0), dtype)
    for options in ({}, {"weights": w}, {"ignore_index": -100}, {"label_smoothing": 0.1, "z_loss": 1e-4}):
        backend.assert_close(al.sparse_softmax_cross_entropy(z, labels, **options), np.zeros(0), dtype=dtype)
        for reduction in ("sum", "mean"):
            out = al.sparse_softmax_cross_entropy(z, labels, reduction=reduction, **options)
            backend.assert_close(out, np.asarray(0.0), dtype=dtype)
    backend.assert_close(al.softmax_cross_entropy(z, t), np.zeros(0), dtype=dtype)
    for reduction in ("sum", "mean"):
        backend.assert_close(
            al.softmax_cross_entropy(z, t, reduction=reduction), np.asarray(0.0), dtype=dtype
        )
    backend.assert_close(al.logsumexp(z), np.zeros(0), dtype=dtype)
    # Sequences: a batch of none, and sequences of no steps.
    for shape in ((0, 3), (2, 0)):
        z_seq = backend.asarray(np.zeros((*shape, 5)), dtype)
        targets = labels_of(backend, np.zeros(shape, dtype=np.int64))
        w_seq = backend.asarray(np.ones(shape), dtype)
        backend.assert_close(al.sequence_loss(z_seq, targets, w_seq), np.asarray(0.0), dtype=dtype)
        per_sequence = al.sequence_loss(z_seq, targets, w_seq, average_across_batch=False)
        backend.assert_close(per_sequence, np.zeros(shape[0]), dtype=dtype)
        by_example = al.sequence_loss_by_example(z_seq, targets, w_seq)
        backend.assert_close(by_example, np.zeros(shape[0]), dtype=dtype)


# ---------------------------------------------------------------- half precision


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_agrees_with_the_float64_reference(backend, dtype):
    needs(backend, dtype)
    rng = np.random.default_rng(6)
    z, z64 = held(backend, rng.normal(scale=3.0, size=(64, 11)), dtype)
    labels = rng.integers(0, 11, size=64)
    labels[::7] = -100
    w, w64 = held(backend, rng.uniform(0.0, 2.0, size=64), dtype)
    cw, cw64 = held(backend, rng.uniform(0.5, 1.5, size=11), dtype)
    y = labels_of(backend, labels)
    for reduction in ("none", "sum", "mean"):
        options = {"ignore_index": -100, "label_smoothing": 0.1, "z_loss": 1e-3, "reduction": reduction}
        out = al.sparse_softmax_cross_entropy(z, y, weights=w, class_weights=cw, **options)
        expected = reference.sparse_ce(z64, labels, weights=w64, class_weights=cw64, **options)
        backend.assert_close(out, expected, dtype=dtype)
    t, t64 = held(backend, rng.dirichlet(np.ones(11), size=64), dtype)
    for reduction in ("none", "mean"):
        out = al.softmax_cross_entropy(z, t, weights=w, label_smoothing=0.05, reduction=reduction)
        expected = reference.dense_ce(z64, t64, weights=w64, label_smoothing=0.05, reduction=reduction)
        backend.assert_close(out, expected, dtype=dtype)
    backend.assert_close(al.logsumexp(z), reference.logsumexp(z64), dtype=dtype)
    z_seq, z_seq64 = held(backend, rng.normal(size=(4, 16, 11)), dtype)
    targets = rng.integers(0, 11, size=(4, 16))
    w_seq, w_seq64 = held(backend, (rng.uniform(size=(4, 16)) > 0.3).astype(float), dtype)
    out = al.sequence_loss(z_seq, labels_of(backend, targets), w_seq, average_across_batch=False)
    expected = reference.tfa_sequence_loss(z_seq64, targets, w_seq64, average_across_batch=False)
    backend.assert_close(out, expected, dtype=dtype)
    out = al.sequence_loss_by_example(z_seq, labels_of(backend, targets), w_seq)
    expected = reference.legacy_sequence_loss_by_example(z_seq64, targets, w_seq64)
    backend.assert_close(out, expected, dtype=dtype)
