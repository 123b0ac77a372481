"""Values of the two cross entropies against the float64 reference and against PyTorch.

Every option (weights, class weights, ignore_index, label smoothing, z-loss), every
reduction, every class axis of 3-D logits, every float dtype and integer label dtype
of the backend. Half-precision inputs are rounded to their dtype first and the
reference is computed from the rounded values, so only the computation is judged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import reference as ref

import arrayloss as al

REDUCTIONS = ["none", "sum", "mean"]
BATCH = (4, 5)  # the labels' shape
CLASSES = 3
IGNORED = -100

# Named option sets of sparse_softmax_cross_entropy; "weights" is "full" (the labels' shape)
# or "row" (shape (1, 5), broadcast over the first axis).
SPARSE_CASES: dict[str, dict[str, Any]] = {
    "plain": {},
    "weights": {"weights": "full"},
    "broadcast_weights": {"weights": "row"},
    "class_weights": {"class_weights": True},
    "ignore_index_in_range": {"ignore_index": 1},
    "ignore_index_outside": {"ignore_index": IGNORED},
    "label_smoothing": {"label_smoothing": 0.2},
    "z_loss": {"z_loss": 0.05},
    "everything": {
        "weights": "full",
        "class_weights": True,
        "ignore_index": IGNORED,
        "label_smoothing": 0.1,
        "z_loss": 0.01,
    },
}


def skip_unless_dtype(backend, dtype: str) -> None:
    if dtype not in backend.float_dtypes:
        pytest.skip(f"{backend.name} has no {dtype} on {backend.device}")


def rounded(backend, values: np.ndarray, dtype: str) -> tuple[Any, np.ndarray]:
    """``values`` as a backend array of ``dtype``, and the float64 values it actually holds."""
    array = backend.asarray(values, dtype)
    return array, backend.to_numpy(array)


def sparse_inputs(seed: int, case: dict[str, Any], num_classes: int = CLASSES) -> dict[str, Any]:
    """NumPy inputs for ``case``: classes-last logits ``BATCH + (C,)``, labels, weights, options."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(*BATCH, num_classes))
    labels = rng.integers(0, num_classes, size=BATCH)
    ignore_index = case.get("ignore_index")
    if ignore_index is not None:
        labels[rng.random(BATCH) < 0.3] = ignore_index
    inputs: dict[str, Any] = {"logits": logits, "labels": labels}
    if "weights" in case:
        shape = BATCH if case["weights"] == "full" else (1, BATCH[1])
        weights = rng.uniform(0.0, 2.0, size=shape)
        weights[rng.random(shape) < 0.2] = 0.0
        inputs["weights"] = weights
    if case.get("class_weights"):
        inputs["class_weights"] = rng.uniform(0.1, 3.0, size=num_classes)
    options = {k: v for k, v in case.items() if k in ("ignore_index", "label_smoothing", "z_loss")}
    return inputs | options


def run_sparse(backend, inputs: dict[str, Any], *, dtype: str, label_dtype: str, axis: int, reduction: str):
    """Call arrayloss on the backend and the reference on the values the backend received.

    Returns ``(result, expected)``; ``inputs["logits"]`` has its classes last and is moved to ``axis``.
    """
    logits, logits_values = rounded(backend, np.moveaxis(inputs["logits"], -1, axis), dtype)
    options = {k: inputs[k] for k in ("ignore_index", "label_smoothing", "z_loss") if k in inputs}
    arrays: dict[str, Any] = {}
    values: dict[str, np.ndarray] = {}
    for name in ("weights", "class_weights"):
        if name in inputs:
            arrays[name], values[name] = rounded(backend, inputs[name], dtype)
    labels = backend.asarray(inputs["labels"], label_dtype)
    out = al.sparse_softmax_cross_entropy(logits, labels, axis=axis, reduction=reduction, **arrays, **options)
    expected = ref.sparse_ce(
        logits_values, inputs["labels"], axis=axis, reduction=reduction, **values, **options
    )
    return out, expected


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("case", sorted(SPARSE_CASES))
def test_sparse_options(backend, case, axis, reduction):
    inputs = sparse_inputs(sorted(SPARSE_CASES).index(case), SPARSE_CASES[case])
    out, expected = run_sparse(
        backend, inputs, dtype="float64", label_dtype="int64", axis=axis, reduction=reduction
    )
    backend.assert_close(out, expected, dtype="float64")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_sparse_float_dtypes(backend, dtype, reduction):
    skip_unless_dtype(backend, dtype)
    inputs = sparse_inputs(11, SPARSE_CASES["everything"])
    out, expected = run_sparse(backend, inputs, dtype=dtype, label_dtype="int64", axis=1, reduction=reduction)
    backend.assert_close(out, expected, dtype=dtype)


@pytest.mark.parametrize("label_dtype", ["int8", "int16", "int32", "int64", "uint8"])
def test_sparse_label_dtypes(backend, label_dtype):
    if label_dtype not in backend.int_dtypes:
        pytest.skip(f"{backend.name} has no {label_dtype} on {backend.device}")
    # uint8 cannot hold a negative ignore_index: ignore a class instead.
    case = SPARSE_CASES["everything"] | {"ignore_index": 2}
    inputs = sparse_inputs(12, case)
    for reduction in REDUCTIONS:
        out, expected = run_sparse(
            backend, inputs, dtype="float64", label_dtype=label_dtype, axis=-1, reduction=reduction
        )
        backend.assert_close(out, expected, dtype="float64")


def dense_inputs(seed: int, *, with_zeros: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Classes-last logits and probability targets ``BATCH + (C,)``, and per-example weights.

    ``with_zeros``: one-hot-like targets with exact zeros, and ``-inf`` logits where the target is 0.
    """
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(*BATCH, CLASSES + 1))
    targets = rng.dirichlet(np.ones(CLASSES + 1), size=BATCH)
    if with_zeros:
        targets[rng.random(targets.shape) < 0.4] = 0.0
        targets[..., 0] += 1e-3  # every row keeps some mass
        targets /= targets.sum(axis=-1, keepdims=True)
        logits = np.where((targets == 0) & (rng.random(targets.shape) < 0.5), -np.inf, logits)
    weights = rng.uniform(0.0, 2.0, size=BATCH)
    weights[rng.random(BATCH) < 0.2] = 0.0
    return logits, targets, weights


def run_dense(backend, seed: int, *, dtype: str, axis: int, reduction: str, **options: Any):
    logits_np, targets_np, weights_np = dense_inputs(seed, with_zeros=options.pop("with_zeros", False))
    logits, logits_values = rounded(backend, np.moveaxis(logits_np, -1, axis), dtype)
    targets, targets_values = rounded(backend, np.moveaxis(targets_np, -1, axis), dtype)
    arrays: dict[str, Any] = {}
    values: dict[str, np.ndarray] = {}
    if options.pop("weighted", False):
        arrays["weights"], values["weights"] = rounded(backend, weights_np, dtype)
    out = al.softmax_cross_entropy(logits, targets, axis=axis, reduction=reduction, **arrays, **options)
    expected = ref.dense_ce(
        logits_values, targets_values, axis=axis, reduction=reduction, **values, **options
    )
    return out, expected


DENSE_CASES: dict[str, dict[str, Any]] = {
    "plain": {},
    "weights": {"weighted": True},
    "label_smoothing": {"label_smoothing": 0.3},
    "zero_targets_and_inf_logits": {"with_zeros": True},
    "everything": {"weighted": True, "label_smoothing": 0.1},
}


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("case", sorted(DENSE_CASES))
def test_dense_options(backend, case, axis, reduction):
    seed = sorted(DENSE_CASES).index(case)
    out, expected = run_dense(
        backend, seed, dtype="float64", axis=axis, reduction=reduction, **DENSE_CASES[case]
    )
    assert np.isfinite(expected).all()  # a target of 0 at a logit of -inf contributes 0, not NaN
    backend.assert_close(out, expected, dtype="float64")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_dense_float_dtypes(backend, dtype, reduction):
    skip_unless_dtype(backend, dtype)
    out, expected = run_dense(
        backend, 21, dtype=dtype, axis=-1, reduction=reduction, weighted=True, label_smoothing=0.1
    )
    backend.assert_close(out, expected, dtype=dtype)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_empty_batch(backend, weighted, reduction):
    """No examples: "none" gives shape (0,), "sum" and "mean" give 0."""
    expected = np.zeros((0,)) if reduction == "none" else np.asarray(0.0)
    weights = {"weights": backend.asarray(np.zeros(0))} if weighted else {}
    logits = backend.asarray(np.zeros((0, CLASSES)))
    sparse = al.sparse_softmax_cross_entropy(
        logits, backend.asarray(np.zeros(0, dtype=np.int64)), reduction=reduction, **weights
    )
    backend.assert_close(sparse, expected, dtype="float64")
    dense = al.softmax_cross_entropy(
        logits, backend.asarray(np.zeros((0, CLASSES))), reduction=reduction, **weights
    )
    backend.assert_close(dense, expected, dtype="float64")


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_one_class(backend, reduction):
    """C = 1: the cross entropy is 0 whatever the logit, smoothed or not; the z-loss is lam * z^2."""
    logits = np.asarray([[3.0], [-2.0], [0.5]])
    labels = np.zeros(3, dtype=np.int64)
    for options in ({}, {"label_smoothing": 0.4}, {"z_loss": 0.1}):
        out = al.sparse_softmax_cross_entropy(
            backend.asarray(logits), backend.asarray(labels), reduction=reduction, **options
        )
        expected = ref.sparse_ce(logits, labels, reduction=reduction, **options)
        backend.assert_close(out, expected, dtype="float64")
    assert ref.sparse_ce(logits, labels, reduction="sum") == 0.0
    dense = al.softmax_cross_entropy(
        backend.asarray(logits), backend.asarray(np.ones((3, 1))), reduction=reduction
    )
    backend.assert_close(dense, np.zeros(3) if reduction == "none" else 0.0, dtype="float64")


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_all_ignored(backend, reduction):
    """Every label ignored: no example counts, the mean is 0 (not 0/0), per-example losses are 0."""
    logits = np.random.default_rng(5).normal(size=(4, CLASSES))
    labels = np.full(4, IGNORED)
    out = al.sparse_softmax_cross_entropy(
        backend.asarray(logits), backend.asarray(labels), ignore_index=IGNORED, reduction=reduction
    )
    backend.assert_close(out, np.zeros(4) if reduction == "none" else 0.0, dtype="float64")


@pytest.mark.parametrize("offset", [1e3, -1e4, 1e30])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_large_logits(backend, dtype, offset):
    """A large common offset of the logits changes no loss: the log of the summed
    exponentials is not rounded away by adding it to the offset."""
    logits_np, targets_np, _ = dense_inputs(41, with_zeros=False)
    labels = np.random.default_rng(41).integers(0, CLASSES + 1, size=BATCH)
    logits, values = rounded(backend, logits_np + offset, dtype)
    options = {"label_smoothing": 0.1}
    out = al.sparse_softmax_cross_entropy(logits, backend.asarray(labels), **options)
    expected = ref.sparse_ce(values, labels, **options)
    assert np.isfinite(expected).all() and (expected > 0.01).all()
    backend.assert_close(out, expected, dtype=dtype)
    targets, target_values = rounded(backend, targets_np, dtype)
    dense = al.softmax_cross_entropy(logits, targets)
    backend.assert_close(dense, ref.dense_ce(values, target_values), dtype=dtype)


# --- PyTorch as a second library (float64) ------------------------------------------------------------


def torch_functional():
    torch = pytest.importorskip("torch")
    return torch, torch.nn.functional


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_sparse_matches_torch_class_weights_ignore_index(backend, reduction):
    """PyTorch's ``weight=`` and ``ignore_index=`` on 3-D logits with classes on axis 1."""
    torch, functional = torch_functional()
    rng = np.random.default_rng(31)
    logits = rng.normal(scale=2.0, size=(4, CLASSES + 2, 6))
    labels = rng.integers(0, CLASSES + 2, size=(4, 6))
    labels[rng.random(labels.shape) < 0.25] = IGNORED
    class_weights = rng.uniform(0.1, 3.0, size=CLASSES + 2)
    expected = functional.cross_entropy(
        torch.from_numpy(logits),
        torch.from_numpy(labels),
        weight=torch.from_numpy(class_weights),
        ignore_index=IGNORED,
        reduction=reduction,
    ).numpy()
    out = al.sparse_softmax_cross_entropy(
        backend.asarray(logits),
        backend.asarray(labels),
        axis=1,
        class_weights=backend.asarray(class_weights),
        ignore_index=IGNORED,
        reduction=reduction,
    )
    backend.assert_close(out, expected, dtype="float64")


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_sparse_matches_torch_label_smoothing(backend, reduction):
    torch, functional = torch_functional()
    rng = np.random.default_rng(32)
    logits = rng.normal(scale=2.0, size=(7, CLASSES + 2))
    labels = rng.integers(0, CLASSES + 2, size=7)
    expected = functional.cross_entropy(
        torch.from_numpy(logits), torch.from_numpy(labels), label_smoothing=0.15, reduction=reduction
    ).numpy()
    out = al.sparse_softmax_cross_entropy(
        backend.asarray(logits), backend.asarray(labels), label_smoothing=0.15, reduction=reduction
    )
    backend.assert_close(out, expected, dtype="float64")


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_dense_matches_torch(backend, reduction):
    """Probability targets with label smoothing, classes on axis 1 as in PyTorch."""
    torch, functional = torch_functional()
    logits, targets, _ = dense_inputs(33, with_zeros=False)
    logits, targets = np.moveaxis(logits, -1, 1), np.moveaxis(targets, -1, 1)
    expected = functional.cross_entropy(
        torch.from_numpy(logits), torch.from_numpy(targets), label_smoothing=0.2, reduction=reduction
    ).numpy()
    out = al.softmax_cross_entropy(
        backend.asarray(logits), backend.asarray(targets), axis=1, label_smoothing=0.2, reduction=reduction
    )
    backend.assert_close(out, expected, dtype="float64")
