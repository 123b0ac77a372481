"""Arrays whose shape holds an unknown dimension: every loss, and its analytic gradient, still works.

The standard lets ``shape`` hold ``None``; Dask writes NaN. Two libraries make such arrays:

- **ndonnx**: lazy arrays built from placeholders with a dynamic batch dimension (``"N"``); the
  graph each loss builds is exported to ONNX and run by onnxruntime on concrete values;
- **Dask**: arrays after boolean indexing, whose chunk sizes (and so row counts) are unknown.

Values are compared with the float64 reference. Other backends deselect these tests: their shapes are known.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import reference as ref

import arrayloss as al

pytestmark = pytest.mark.backend("ndonnx", "dask")

RNG = np.random.default_rng(21)
N, T, C, D = 6, 3, 5, 4
LOGITS = RNG.normal(size=(N, C)) * 2
LABELS = RNG.integers(0, C, size=N)
LABELS[1] = 2
WEIGHTS = RNG.uniform(0.5, 1.5, size=N)
WEIGHTS[2] = 0.0
TARGETS = RNG.dirichlet(np.ones(C), size=N)
SEQ_LOGITS = RNG.normal(size=(N, T, C))
SEQ_LABELS = RNG.integers(0, C, size=(N, T))
SEQ_WEIGHTS = (RNG.uniform(size=(N, T)) > 0.3).astype(np.float64)
HIDDEN = RNG.normal(size=(N, D))
WEIGHT = RNG.normal(size=(C, D))


class UnknownRows:
    """Arrays of one backend whose first dimension is unknown, and how to get their values."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.inputs: dict[str, tuple[Any, np.ndarray]] = {}

    def array(self, name: str, values: np.ndarray) -> Any:
        """``values`` as an array whose first dimension is unknown."""
        dtype = "float64" if values.dtype.kind == "f" else "int64"
        if self.backend.name == "ndonnx":
            ndx = importlib.import_module("ndonnx")
            placeholder = ndx.argument(shape=("N", *values.shape[1:]), dtype=getattr(ndx, dtype))
            self.inputs[name] = (placeholder, values.astype(dtype))
            return placeholder
        array = self.backend.asarray(values, dtype)
        kept = self.backend.asarray(np.ones(values.shape[0], dtype=bool), "bool")
        return array[kept]  # Dask: the number of rows that boolean indexing keeps is unknown

    def values(self, **outputs: Any) -> dict[str, np.ndarray]:
        """The NumPy values of ``outputs``: the ONNX graph run by onnxruntime, or Dask computed."""
        if self.backend.name == "dask":
            return {name: np.asarray(out.compute(), dtype=np.float64) for name, out in outputs.items()}
        ndx = importlib.import_module("ndonnx")
        onnxruntime = importlib.import_module("onnxruntime")
        model = ndx.build({name: p for name, (p, _) in self.inputs.items()}, outputs)
        session = onnxruntime.InferenceSession(model.SerializeToString())
        feeds = {name: values for name, (_, values) in self.inputs.items()}
        results = session.run(list(outputs), feeds)
        return {name: np.asarray(r, dtype=np.float64) for name, r in zip(outputs, results, strict=True)}


@pytest.fixture
def unknown(backend) -> UnknownRows:
    return UnknownRows(backend)


def check(values: dict[str, np.ndarray], **expected: np.ndarray) -> None:
    for name, want in expected.items():
        np.testing.assert_allclose(values[name], want, rtol=1e-9, atol=1e-12, err_msg=name)


def unknown_dimension(out: Any) -> bool:
    return any(d is None or d != d for d in out.shape)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize(
    "options",
    [{}, {"weights": True, "ignore_index": 2, "label_smoothing": 0.1, "z_loss": 1e-3}],
    ids=["plain", "everything"],
)
def test_sparse_cross_entropy(unknown, reduction, options):
    z, y = unknown.array("z", LOGITS), unknown.array("y", LABELS)
    options = dict(options)
    if options.pop("weights", False):
        options["weights"] = unknown.array("w", WEIGHTS)
    out = al.sparse_softmax_cross_entropy(z, y, reduction=reduction, **options)
    assert unknown_dimension(out) == (reduction == "none")
    expected_options = {**options, **({"weights": WEIGHTS} if "weights" in options else {})}
    check(unknown.values(out=out), out=ref.sparse_ce(LOGITS, LABELS, reduction=reduction, **expected_options))


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_sparse_cross_entropy_gradient(unknown, reduction):
    z, y = unknown.array("z", LOGITS), unknown.array("y", LABELS)
    value, grad = al.value_and_grad(al.sparse_softmax_cross_entropy)(z, y, reduction=reduction)

    def reference_value(x: np.ndarray) -> np.ndarray:
        return ref.sparse_ce(x, LABELS, reduction=reduction)

    expected_grad = ref.numeric_gradient(lambda x: reference_value(x).sum(), LOGITS, 1e-6)
    got = unknown.values(value=value, grad=grad)
    check(got, value=reference_value(LOGITS))
    np.testing.assert_allclose(got["grad"], expected_grad, rtol=1e-6, atol=1e-8)


def test_dense_cross_entropy(unknown):
    z, t, w = unknown.array("z", LOGITS), unknown.array("t", TARGETS), unknown.array("w", WEIGHTS)
    out = al.softmax_cross_entropy(z, t, weights=w, label_smoothing=0.1, reduction="mean")
    value, grad = al.value_and_grad(al.softmax_cross_entropy)(z, t, reduction="sum")
    expected = ref.dense_ce(LOGITS, TARGETS, weights=WEIGHTS, label_smoothing=0.1, reduction="mean")
    expected_grad = ref.numeric_gradient(lambda x: ref.dense_ce(x, TARGETS, reduction="sum"), LOGITS, 1e-6)
    got = unknown.values(out=out, value=value, grad=grad)
    check(got, out=expected, value=ref.dense_ce(LOGITS, TARGETS, reduction="sum"))
    np.testing.assert_allclose(got["grad"], expected_grad, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    "flags",
    [{}, {"average_across_batch": False}, {"average_across_timesteps": False, "average_across_batch": False}],
    ids=["scalar", "per-sequence", "per-step"],
)
def test_sequence_loss(unknown, flags):
    z, y = unknown.array("z", SEQ_LOGITS), unknown.array("y", SEQ_LABELS)
    w = unknown.array("w", SEQ_WEIGHTS)
    out = al.sequence_loss(z, y, w, **flags)
    value, grad = al.value_and_grad(al.sequence_loss)(z, y, w, **flags)

    def reference_value(x: np.ndarray) -> np.ndarray:
        return ref.tfa_sequence_loss(x, SEQ_LABELS, SEQ_WEIGHTS, **flags)

    expected_grad = ref.numeric_gradient(lambda x: reference_value(x).sum(), SEQ_LOGITS, 1e-6)
    got = unknown.values(out=out, value=value, grad=grad)
    check(got, out=reference_value(SEQ_LOGITS), value=reference_value(SEQ_LOGITS))
    np.testing.assert_allclose(got["grad"], expected_grad, rtol=1e-6, atol=1e-8)


def test_sequence_loss_by_example(unknown):
    z, y = unknown.array("z", SEQ_LOGITS), unknown.array("y", SEQ_LABELS)
    w = unknown.array("w", SEQ_WEIGHTS)
    out = al.sequence_loss_by_example(z, y, w)
    expected = ref.legacy_sequence_loss_by_example(SEQ_LOGITS, SEQ_LABELS, SEQ_WEIGHTS)
    check(unknown.values(out=out), out=expected)


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_linear_cross_entropy(unknown, reduction):
    """The chunk loop needs the number of rows: with it unknown, one chunk."""
    h, y = unknown.array("h", HIDDEN), unknown.array("y", LABELS)
    weight = unknown.backend.asarray(WEIGHT, "float64")
    if unknown.backend.name == "ndonnx":  # a constant of the graph
        weight = importlib.import_module("ndonnx").asarray(WEIGHT)
    out = al.linear_cross_entropy(h, weight, y, reduction=reduction, chunk_size=2)
    value, (d_hidden, d_weight) = al.value_and_grad(al.linear_cross_entropy)(
        h, weight, y, reduction=reduction
    )

    def reference_value(hidden: np.ndarray, w: np.ndarray) -> np.ndarray:
        return ref.sparse_ce(hidden @ w.T, LABELS, reduction=reduction)

    got = unknown.values(out=out, value=value, d_hidden=d_hidden, d_weight=d_weight)
    check(got, out=reference_value(HIDDEN, WEIGHT), value=reference_value(HIDDEN, WEIGHT))
    gradients: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "d_hidden": lambda x: reference_value(x, WEIGHT).sum(),
        "d_weight": lambda x: reference_value(HIDDEN, x).sum(),
    }
    for name, at in (("d_hidden", HIDDEN), ("d_weight", WEIGHT)):
        expected = ref.numeric_gradient(gradients[name], at, 1e-6)
        np.testing.assert_allclose(got[name], expected, rtol=1e-6, atol=1e-8, err_msg=name)


def test_logsumexp_and_log_softmax(unknown):
    z = unknown.array("z", LOGITS)
    got = unknown.values(lse=al.logsumexp(z), log_probs=al.log_softmax(z))
    check(got, lse=ref.logsumexp(LOGITS), log_probs=LOGITS - ref.logsumexp(LOGITS)[:, None])


BINARY_TARGETS = (RNG.uniform(size=(N, C)) > 0.5).astype(np.float64)


@pytest.mark.parametrize("name", ["bce", "focal", "kl"])
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_binary_and_divergence_losses(unknown, name, reduction):
    function, reference, targets, options = {
        "bce": (al.sigmoid_binary_cross_entropy, ref.sigmoid_bce, BINARY_TARGETS, {"label_smoothing": 0.1}),
        "focal": (al.sigmoid_focal_loss, ref.sigmoid_focal, BINARY_TARGETS, {"alpha": 0.25}),
        "kl": (al.kl_divergence, ref.kl_divergence, TARGETS, {}),
    }[name]
    inputs = LOGITS - ref.logsumexp(LOGITS)[:, None] if name == "kl" else LOGITS
    z, t = unknown.array("z", inputs), unknown.array("t", targets)
    weights = WEIGHTS if name == "kl" else WEIGHTS[:, None]
    w = unknown.array("w", weights)
    out = function(z, t, weights=w, reduction=reduction, **options)
    value, grad = al.value_and_grad(function)(z, t, reduction=reduction, **options)
    assert unknown_dimension(out) == (reduction == "none")

    def reference_value(x: np.ndarray) -> np.ndarray:
        return reference(x, targets, reduction=reduction, **options)

    expected_grad = ref.numeric_gradient(lambda x: reference_value(x).sum(), inputs, 1e-6)
    got = unknown.values(out=out, value=value, grad=grad)
    expected = reference(inputs, targets, weights=weights, reduction=reduction, **options)
    check(got, out=expected, value=reference_value(inputs))
    np.testing.assert_allclose(got["grad"], expected_grad, rtol=1e-6, atol=1e-8)


CTC_LOGITS = RNG.normal(size=(N, 4, 3)) * 2
CTC_LABELS = np.array([[1, 1], [2, 1], [1, 2], [2, 2], [1, 0], [2, 0]])
CTC_LOGIT_LENGTHS = np.array([4, 3, 4, 2, 1, 0])
CTC_LABEL_LENGTHS = np.array([2, 2, 1, 1, 1, 0])  # [2, 2] in 2 frames needs 3: infeasible


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_ctc_loss(unknown, reduction):
    """The number of sequences unknown: the lattice is built by broadcasting, the time loop over the
    known frames; values against the brute force, the gradient (``zero_infinity``) against its
    finite differences."""
    z, y = unknown.array("z", CTC_LOGITS), unknown.array("y", CTC_LABELS)
    a, b = unknown.array("a", CTC_LOGIT_LENGTHS), unknown.array("b", CTC_LABEL_LENGTHS)
    options = {"logit_lengths": a, "label_lengths": b, "reduction": reduction}
    out = al.ctc_loss(z, y, **options)
    value, grad = al.value_and_grad(al.ctc_loss)(z, y, zero_infinity=True, **options)
    assert unknown_dimension(out) == (reduction == "none")
    lengths = {"logit_lengths": CTC_LOGIT_LENGTHS, "label_lengths": CTC_LABEL_LENGTHS}

    def reference_value(x: np.ndarray, zero_infinity: bool = True) -> np.ndarray:
        return ref.ctc(x, CTC_LABELS, reduction=reduction, zero_infinity=zero_infinity, **lengths)

    expected_grad = ref.numeric_gradient(lambda x: reference_value(x).sum(), CTC_LOGITS, 1e-6)
    got = unknown.values(out=out, value=value, grad=grad)
    check(got, out=reference_value(CTC_LOGITS, zero_infinity=False), value=reference_value(CTC_LOGITS))
    np.testing.assert_allclose(got["grad"], expected_grad, rtol=1e-6, atol=1e-8)
