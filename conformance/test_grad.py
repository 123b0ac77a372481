"""``arrayloss.value_and_grad`` on every backend: values and gradients of every loss and option.

The expected gradient is a central finite difference, in float64, of the plain
reference (``reference.py``), never of arrayloss. On Dask everything runs under a
scheduler that raises, so a loss or gradient that computes before it is asked fails.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import reference as ref

import arrayloss as al

IGNORED = -100
GRAD_TOLERANCE = {  # (rtol, atol) of a gradient against float64 finite differences
    "float64": (1e-7, 1e-9),
    "float32": (1e-4, 2e-6),
    "float16": (4e-3, 4e-3),
    "bfloat16": (3e-2, 3e-2),
}


@dataclass
class Case:
    """One call of a loss: NumPy inputs (logits first) and the matching reference."""

    loss: Callable[..., Any]
    reference: Callable[..., np.ndarray]
    logits: np.ndarray
    args: list[np.ndarray] = field(default_factory=list)  # further positional arrays
    options: dict[str, Any] = field(default_factory=dict)  # arrays (NumPy) and scalars
    steps: bool = False  # sequence_loss_by_example with lists of per-step arrays ([batch, time, ...] here)


def _labels(rng: np.random.Generator, shape: tuple[int, ...], classes: int) -> np.ndarray:
    return rng.integers(0, classes, size=shape)


def _sparse(name: str, reduction: str) -> Case:
    rng = np.random.default_rng(len(name) + 7 * len(reduction))
    logits = rng.normal(size=(6, 5)) * 2
    labels = _labels(rng, (6,), 5)
    options: dict[str, Any] = {"reduction": reduction}
    if name in ("weights", "everything"):
        options["weights"] = np.array([1.0, 0.0, 2.0, 0.5, 1.0, 3.0])
    if name in ("class_weights", "everything"):
        options["class_weights"] = np.array([1.0, 0.0, 2.0, 0.5, 1.5])
    if name in ("ignore_index", "everything"):
        labels[[1, 4]] = IGNORED
        options["ignore_index"] = IGNORED
    if name in ("label_smoothing", "everything"):
        options["label_smoothing"] = 0.15
    if name in ("z_loss", "everything"):
        options["z_loss"] = 0.02
    if name == "softcap":
        options["softcap"] = 1.5
    if name == "all_ignored":
        labels[:] = IGNORED
        options["ignore_index"] = IGNORED
    if name == "axis":  # [batch, classes, time] with the classes on axis 1
        logits = rng.normal(size=(3, 5, 2))
        labels = _labels(rng, (3, 2), 5)
        options |= {"axis": 1, "weights": np.array([[1.0, 0.0], [2.0, 1.0], [0.5, 1.0]])}
    return Case(al.sparse_softmax_cross_entropy, ref.sparse_ce, logits, [labels], options)


def _dense(name: str, reduction: str) -> Case:
    rng = np.random.default_rng(100 + len(name) + 7 * len(reduction))
    logits = rng.normal(size=(5, 4)) * 2
    targets = rng.dirichlet(np.ones(4), size=5)
    targets[2] = [0.0, 1.0, 0.0, 0.0]
    options: dict[str, Any] = {"reduction": reduction}
    if name == "weights":
        options["weights"] = np.array([1.0, 0.0, 2.0, 0.5, 1.0])
    if name == "label_smoothing":
        options["label_smoothing"] = 0.2
    if name == "axis":
        logits, targets = logits.T.copy(), targets.T.copy()
        options["axis"] = 0
    return Case(al.softmax_cross_entropy, ref.dense_ce, logits, [targets], options)


def _sequence(flags: dict[str, bool], dense: bool = False, weighted: bool = True) -> Case:
    rng = np.random.default_rng(200 + sum(v << i for i, v in enumerate(flags.values())) + 20 * dense)
    logits = rng.normal(size=(3, 4, 5)) * 2
    targets = rng.dirichlet(np.ones(5), size=(3, 4)) if dense else _labels(rng, (3, 4), 5)
    weights = np.array([[1.0, 1.0, 0.0, 0.0], [2.0, 0.5, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    args = [targets, weights] if weighted else [targets]
    return Case(al.sequence_loss, ref.tfa_sequence_loss, logits, args, dict(flags))


def _by_example(average: bool, steps: bool) -> Case:
    rng = np.random.default_rng(300 + 2 * average + steps)
    logits = rng.normal(size=(3, 4, 5)) * 2
    targets = _labels(rng, (3, 4), 5)
    weights = np.array([[1.0, 1.0, 0.0, 0.0], [2.0, 0.5, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    options = {"average_across_timesteps": average}
    return Case(
        al.sequence_loss_by_example,
        ref.legacy_sequence_loss_by_example,
        logits,
        [targets, weights],
        options,
        steps=steps,
    )


def _binary(name: str, reduction: str) -> Case:
    rng = np.random.default_rng(400 + len(name) + 7 * len(reduction))
    logits = rng.normal(size=(4, 3)) * 3
    targets = rng.uniform(size=(4, 3))
    targets[0] = [0.0, 1.0, 1.0]  # exact 0 and 1
    logits[0, :2] = 0.0  # at a logit of exactly 0 too, where autodiff meets the kinks of max(z, 0) and |z|
    options: dict[str, Any] = {"reduction": reduction}
    if name in ("weights", "everything"):
        options["weights"] = np.array([[1.0], [0.0], [2.0], [0.5]])  # broadcast over the labels
    if name in ("pos_weight", "everything"):
        options["pos_weight"] = np.array([2.0, 0.5, 1.0])
    if name in ("label_smoothing", "everything"):
        options["label_smoothing"] = 0.2
    return Case(al.sigmoid_binary_cross_entropy, ref.sigmoid_bce, logits, [targets], options)


def _focal(name: str, reduction: str) -> Case:
    rng = np.random.default_rng(500 + len(name) + 7 * len(reduction))
    logits = rng.normal(size=(5, 3)) * 3
    targets = (rng.uniform(size=(5, 3)) > 0.5).astype(np.float64)
    targets[4] = [0.3, 0.9, 0.5]  # soft targets too
    logits[0, 0], targets[0, 0] = 0.0, 1.0  # a logit of exactly 0
    options: dict[str, Any] = {"reduction": reduction}
    if name == "alpha":
        options["alpha"] = 0.25
    if name == "gamma_below_one":
        options["gamma"] = 0.5
    if name == "weights":
        options |= {"weights": np.array([1.0, 0.0, 2.0, 0.5, 1.0])[:, None], "gamma": 1.5}
    return Case(al.sigmoid_focal_loss, ref.sigmoid_focal, logits, [targets], options)


def _kl(name: str, reduction: str) -> Case:
    rng = np.random.default_rng(600 + len(name) + 7 * len(reduction))
    log_p = np.log(rng.dirichlet(np.ones(4), size=5))
    targets = rng.dirichlet(np.ones(4), size=5)
    targets[1] = [0.0, 1.0, 0.0, 0.0]  # terms of t = 0
    options: dict[str, Any] = {"reduction": reduction}
    if name == "log_targets":
        targets = np.log(rng.dirichlet(np.ones(4), size=5))
        options["log_targets"] = True
    if name == "weights":
        options["weights"] = np.array([1.0, 0.0, 2.0, 0.5, 1.0])
    if name == "axis":
        log_p, targets = log_p.T.copy(), targets.T.copy()
        options["axis"] = 0
    return Case(al.kl_divergence, ref.kl_divergence, log_p, [targets], options)


SPARSE_NAMES = [
    "plain",
    "weights",
    "class_weights",
    "ignore_index",
    "label_smoothing",
    "z_loss",
    "everything",
    "softcap",
]
CASES: dict[str, Case] = {
    **{f"sparse-{n}-{r}": _sparse(n, r) for n in SPARSE_NAMES for r in ("none", "sum", "mean")},
    "sparse-all_ignored-mean": _sparse("all_ignored", "mean"),
    **{f"sparse-axis-{r}": _sparse("axis", r) for r in ("none", "mean")},
    **{
        f"dense-{n}-{r}": _dense(n, r)
        for n in ("plain", "weights", "label_smoothing")
        for r in ("none", "mean")
    },
    "dense-axis-sum": _dense("axis", "sum"),
    **{
        "sequence-" + "-".join(k for k, v in flags.items() if v) or "sequence-unreduced": _sequence(flags)
        for flags in ref.tfa_flag_combinations(allowed=True)
    },
    "sequence-dense_targets": _sequence({}, dense=True),
    "sequence-no_weights": _sequence({"average_across_batch": False}, weighted=False),
    **{
        f"by_example-{'steps' if s else 'stacked'}-{'average' if a else 'total'}": _by_example(a, s)
        for a in (True, False)
        for s in (True, False)
    },
    **{
        f"binary-{n}-{r}": _binary(n, r)
        for n in ("plain", "weights", "pos_weight", "label_smoothing", "everything")
        for r in ("none", "sum", "mean")
    },
    **{
        f"focal-{n}-{r}": _focal(n, r)
        for n in ("plain", "alpha", "gamma_below_one", "weights")
        for r in ("none", "mean")
    },
    **{
        f"kl-{n}-{r}": _kl(n, r)
        for n in ("plain", "log_targets", "weights", "axis")
        for r in ("none", "sum", "mean")
    },
}


def needs(backend, dtype: str) -> None:
    if dtype not in backend.float_dtypes:
        pytest.skip(f"{backend.name} has no {dtype} on {backend.device}")


def label_dtype(backend) -> str:
    return "int64" if "int64" in backend.int_dtypes else "int32"


def rounded(backend, values: np.ndarray, dtype: str) -> np.ndarray:
    """``values`` rounded to ``dtype`` by the backend and back to float64 (what the backend holds)."""
    return backend.to_numpy(backend.asarray(values, dtype))


def held(backend, case: Case, dtype: str) -> Case:
    """The case with its float inputs rounded to ``dtype``: the reference sees what the backend holds."""

    def held_value(v: Any) -> Any:
        return rounded(backend, v, dtype) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v

    return Case(
        case.loss,
        case.reference,
        held_value(case.logits),
        [held_value(a) for a in case.args],
        {k: held_value(v) for k, v in case.options.items()},
        case.steps,
    )


def on_backend(backend, case: Case, dtype: str) -> tuple[Any, list[Any], dict[str, Any]]:
    """Logits, further positional arrays and options of ``case`` as arrays of ``backend``."""

    def array(v: np.ndarray, float_dtype: str) -> Any:
        return backend.asarray(v, float_dtype if v.dtype.kind == "f" else label_dtype(backend))

    def convert(v: Any, float_dtype: str) -> Any:
        if not isinstance(v, np.ndarray):
            return v
        if case.steps:  # [batch, time, ...] -> a list of per-step [batch, ...] arrays
            return [array(np.ascontiguousarray(v[:, t]), float_dtype) for t in range(v.shape[1])]
        return array(v, float_dtype)

    other = dtype if dtype in ("float32", "float64") else "float32"
    logits = convert(case.logits, dtype)
    args = [convert(a, other) for a in case.args]
    return logits, args, {k: convert(v, other) for k, v in case.options.items()}


def reference_value(case: Case, logits: np.ndarray) -> np.ndarray:
    return np.asarray(case.reference(logits, *case.args, **case.options), dtype=np.float64)


def finite_difference_grad(case: Case) -> np.ndarray:
    """Central differences of ``sum(reference)`` with respect to the logits, in float64."""
    return ref.numeric_gradient(lambda z: reference_value(case, z).sum(), case.logits, 1e-5, relative=True)


@contextlib.contextmanager
def no_compute(backend) -> Iterator[None]:
    """On Dask: fail if anything is computed inside. Elsewhere: nothing."""
    if backend.name != "dask":
        yield
        return
    dask = importlib.import_module("dask")

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a Dask graph was computed before the caller asked for it")

    with dask.config.set(scheduler=refuse):
        yield


def gradient_to_numpy(backend, case: Case, grad: Any, dtype: str) -> np.ndarray:
    """Check the gradient's namespace/device/dtype/shape (each step for lists); return it in float64."""
    if case.steps:
        assert isinstance(grad, list), f"per-step logits give a list of gradients, got {type(grad)}"
        assert len(grad) == case.logits.shape[1]
        shape = case.logits.shape[:1] + case.logits.shape[2:]
        steps = [backend.check_result(g, dtype=dtype, shape=shape) for g in grad]
        return np.stack(steps, axis=1)
    return backend.check_result(grad, dtype=dtype, shape=case.logits.shape)


def check_value_and_grad(backend, case: Case, dtype: str) -> None:
    case = held(backend, case, dtype)
    logits, args, options = on_backend(backend, case, dtype)
    with no_compute(backend):
        value, grad = al.value_and_grad(case.loss)(logits, *args, **options)
    expected = reference_value(case, case.logits)
    backend.assert_close(value, expected, dtype=dtype)
    got = gradient_to_numpy(backend, case, grad, dtype)
    rtol, atol = GRAD_TOLERANCE[dtype]
    np.testing.assert_allclose(got, finite_difference_grad(case), rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(CASES))
def test_value_and_grad_matches_finite_differences(backend, name, dtype):
    needs(backend, dtype)
    check_value_and_grad(backend, CASES[name], dtype)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize(
    "name", ["sparse-everything-mean", "dense-label_smoothing-none", "by_example-steps-average"]
)
def test_half_precision_gradient_in_input_dtype(backend, name, dtype):
    needs(backend, dtype)
    check_value_and_grad(backend, CASES[name], dtype)


@pytest.mark.parametrize("garbage", [False, True], ids=["finite", "garbage"])
def test_sequence_masked_steps_have_zero_gradient(backend, garbage):
    """The one-pass gradient of a scalar sequence_loss: masked steps give exactly 0, finite or not."""
    rng = np.random.default_rng(11)
    logits = rng.normal(size=(2, 3, 4)) * 2
    targets = rng.integers(0, 4, size=(2, 3))
    weights = np.array([[1.0, 0.0, 2.0], [0.5, 1.0, 0.0]])
    if garbage:  # the masked steps (0, 1) and (1, 2) hold NaN and +-inf
        logits[0, 1] = [np.nan, 0.0, np.inf, 1.0]
        logits[1, 2] = [np.inf, -np.inf, 0.0, 0.0]
    case = Case(al.sequence_loss, ref.tfa_sequence_loss, logits, [targets, weights], {})
    with no_compute(backend):
        value, grad = al.value_and_grad(al.sequence_loss)(
            backend.asarray(logits), backend.asarray(targets), backend.asarray(weights)
        )
    with np.errstate(invalid="ignore"):  # the reference's masked steps compute inf - inf, then drop it
        backend.assert_close(value, reference_value(case, logits), dtype="float64")
        expected = finite_difference_grad(case)
    got = backend.check_result(grad, dtype="float64", shape=logits.shape)
    np.testing.assert_array_equal(got[0, 1], 0.0)
    np.testing.assert_array_equal(got[1, 2], 0.0)
    kept = weights != 0
    np.testing.assert_allclose(got[kept], expected[kept], rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("softcap", [None, 3.0])
def test_zero_weight_rows_have_zero_gradient_even_if_not_finite(backend, softcap):
    logits = np.array([[1.0, 2.0, 0.5], [np.nan, np.inf, 0.0], [0.3, -np.inf, 0.1], [np.inf, 1.0, 2.0]])
    labels = np.array([0, 1, 2, 1])
    weights = np.array([1.0, 0.0, 2.0, 0.0])
    for options in ({"weights": backend.asarray(weights)}, {"ignore_index": 1}):
        with no_compute(backend):
            value, grad = al.value_and_grad(al.sparse_softmax_cross_entropy)(
                backend.asarray(logits), backend.asarray(labels), reduction="mean", softcap=softcap, **options
            )
        w = weights if "weights" in options else (labels != 1).astype(float)
        case = Case(al.sparse_softmax_cross_entropy, ref.sparse_ce, logits, [labels], {"weights": w})
        case.options |= {"reduction": "mean", "softcap": softcap}
        with np.errstate(invalid="ignore"):  # the reference's masked rows compute inf - inf, then drop it
            backend.assert_close(value, reference_value(case, logits), dtype="float64")
            expected = finite_difference_grad(case)
        got = backend.check_result(grad, dtype="float64", shape=logits.shape)
        np.testing.assert_array_equal(got[[1, 3]], 0.0)
        assert got[2, 1] == 0.0, "a logit of -inf has probability 0 and gradient 0"
        finite = np.isfinite(logits)  # a difference at an infinite logit is not defined
        np.testing.assert_allclose(got[finite], expected[finite], rtol=1e-7, atol=1e-9)


def test_out_of_range_label(backend):
    logits = backend.asarray(np.array([[1.0, 2.0, 0.5], [0.1, 0.2, 0.3], [0.3, 0.0, 0.1]]))
    labels = backend.asarray(np.array([0, 7, 2]), label_dtype(backend))
    f = al.value_and_grad(al.sparse_softmax_cross_entropy)
    if backend.eager:
        with pytest.raises(ValueError, match="labels contains 7"):
            f(logits, labels)
        return
    with no_compute(backend):
        value, grad = f(logits, labels)
    got_value = backend.check_result(value, dtype="float64", shape=(3,))
    got = backend.check_result(grad, dtype="float64", shape=(3, 3))
    assert np.isnan(got_value[1]) and np.all(np.isnan(got[1])), "an out-of-range label gives a NaN row"
    assert np.all(np.isfinite(got_value[[0, 2]])) and np.all(np.isfinite(got[[0, 2]]))


@pytest.mark.parametrize("function", [al.logsumexp, al.log_softmax, np.sum])
def test_value_and_grad_rejects_what_it_cannot_differentiate(function):
    with pytest.raises(TypeError, match="no analytic gradient"):
        al.value_and_grad(function)


@pytest.mark.parametrize("loss", [al.sequence_loss, al.sequence_loss_by_example])
def test_custom_softmax_loss_function_is_an_error(backend, loss):
    logits = backend.asarray(np.zeros((2, 3, 4)))
    targets = backend.asarray(np.zeros((2, 3), dtype=np.int64), label_dtype(backend))
    weights = backend.asarray(np.ones((2, 3)))
    f = al.value_and_grad(loss)
    with pytest.raises(TypeError, match="softmax_loss_function"):
        f(logits, targets, weights, softmax_loss_function=lambda labels, logits: logits[:, 0])
    value, grad = f(logits, targets, weights)  # without it: fine
    assert backend.check_result(grad, dtype="float64", shape=(2, 3, 4)).shape == (2, 3, 4)
    assert np.all(np.isfinite(backend.to_numpy(value)))


@pytest.mark.parametrize("softcap", [None, 2.0])
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_linear_cross_entropy_gradients_of_hidden_and_weight(backend, reduction, softcap):
    rng = np.random.default_rng(17)
    hidden, weight = rng.normal(size=(5, 3)) * 2, rng.normal(size=(4, 3))
    labels = np.array([0, 3, IGNORED, 1, 2])
    options = {"ignore_index": IGNORED, "label_smoothing": 0.1, "reduction": reduction, "softcap": softcap}

    def total(h: np.ndarray, w: np.ndarray) -> float:
        return float(np.sum(ref.sparse_ce(h @ w.T, labels, **options)))

    with no_compute(backend):
        value, (d_hidden, d_weight) = al.value_and_grad(al.linear_cross_entropy)(
            backend.asarray(hidden),
            backend.asarray(weight),
            backend.asarray(labels, label_dtype(backend)),
            **options,
        )
    backend.assert_close(value, ref.sparse_ce(hidden @ weight.T, labels, **options), dtype="float64")
    expected_hidden = ref.numeric_gradient(lambda h: total(h, weight), hidden)
    expected_weight = ref.numeric_gradient(lambda w: total(hidden, w), weight)
    backend.assert_close(d_hidden, expected_hidden, dtype="float64", scale=1e3)
    backend.assert_close(d_weight, expected_weight, dtype="float64", scale=1e3)


@pytest.mark.parametrize(
    "name",
    [
        "sparse-everything-mean",
        "sparse-axis-none",
        "dense-label_smoothing-none",
        "sequence-average_across_timesteps-average_across_batch",
        "by_example-steps-average",
        "binary-everything-mean",
        "binary-everything-none",
        "focal-weights-mean",
        "sparse-softcap-mean",
        "sparse-softcap-none",
    ],
)
def test_gradient_in_blocks_of_one_row(backend, name, configure):
    """Eager host arrays compute the gradient in blocks of rows: force one row per block."""
    configure(block_bytes=1)
    check_value_and_grad(backend, CASES[name], "float64" if "float64" in backend.float_dtypes else "float32")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gradient_of_huge_logits_keeps_its_precision(backend, dtype):
    """Logits near 1e4: the softmax must not go through a rounded log-sum-exp of 1e4."""
    needs(backend, dtype)
    rng = np.random.default_rng(23)
    logits = rounded(backend, 1e4 + rng.normal(size=(8, 6)), dtype)
    labels = rng.integers(0, 6, size=8)
    shifted = logits - logits.max(axis=1, keepdims=True)
    softmax = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    expected = (softmax - np.eye(6)[labels]) / 8  # d mean / d logits, in float64
    with no_compute(backend):
        _, grad = al.value_and_grad(al.sparse_softmax_cross_entropy)(
            backend.asarray(logits, dtype), backend.asarray(labels, label_dtype(backend)), reduction="mean"
        )
    backend.assert_close(grad, expected, dtype=dtype)
