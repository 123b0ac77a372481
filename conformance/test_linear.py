"""linear_cross_entropy: the float64 reference's cross entropy of ``hidden @ weight.T + bias``.

Values for every option, reduction and chunk size; gradients of hidden, weight and
bias against central finite differences of the reference; PyTorch's
``loss.backward()`` and JAX's autodiff against the same numbers; argument errors.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import reference as ref

import arrayloss as al
from arrayloss._linear import linear_cross_entropy_value_and_grad

ROWS, FEATURES, CLASSES = 7, 3, 5
CHUNKS = [1, 3, 7, 100, None]
OPTIONS: dict[str, dict[str, Any]] = {
    "plain": {},
    "bias": {"bias": True},
    "weights": {"weights": True, "class_weights": True},
    "everything": {
        "bias": True,
        "weights": True,
        "class_weights": True,
        "ignore_index": 2,
        "label_smoothing": 0.1,
        "z_loss": 0.01,
    },
}


def problem(
    case: str, seed: int = 0, batch: tuple[int, ...] = (ROWS,)
) -> tuple[dict[str, Any], dict[str, Any]]:
    """NumPy ``arrays`` (hidden, weight, labels, bias) and ``options`` (weights... as NumPy) for ``case``."""
    rng = np.random.default_rng(seed)
    arrays = {
        "hidden": rng.normal(size=(*batch, FEATURES)),
        "weight": rng.normal(size=(CLASSES, FEATURES)),
        "labels": rng.integers(0, CLASSES, size=batch),
        "bias": rng.normal(size=CLASSES) if OPTIONS[case].get("bias") else None,
    }
    options = {k: v for k, v in OPTIONS[case].items() if k not in ("bias", "weights", "class_weights")}
    if OPTIONS[case].get("weights"):
        weights = rng.uniform(0.0, 2.0, size=batch)
        weights.flat[0] = 0.0
        options["weights"] = weights
        options["class_weights"] = rng.uniform(0.5, 1.5, size=CLASSES)
    return arrays, options


def reference_loss(arrays: dict[str, Any], options: dict[str, Any], reduction: str) -> np.ndarray:
    logits = arrays["hidden"] @ arrays["weight"].T
    if arrays["bias"] is not None:
        logits = logits + arrays["bias"]
    return ref.sparse_ce(logits, arrays["labels"], reduction=reduction, **options)


def on(backend, values: dict[str, Any], dtype: str) -> dict[str, Any]:
    """The arrays (or options) of ``values`` on the backend; floats in ``dtype``."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        if isinstance(value, np.ndarray):
            out[name] = backend.asarray(value, dtype if value.dtype.kind == "f" else None)
        else:
            out[name] = value
    return out


def call(fn, arrays: dict[str, Any], options: dict[str, Any], **extra: Any) -> Any:
    return fn(arrays["hidden"], arrays["weight"], arrays["labels"], bias=arrays["bias"], **options, **extra)


@pytest.mark.parametrize("chunk_size", CHUNKS)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("case", sorted(OPTIONS))
def test_values_match_reference(backend, case, reduction, chunk_size):
    arrays, options = problem(case)
    expected = reference_loss(arrays, options, reduction)
    for dtype in ("float32", "float64"):
        if dtype not in backend.float_dtypes:
            continue
        out = call(
            al.linear_cross_entropy,
            on(backend, arrays, dtype),
            on(backend, options, dtype),
            reduction=reduction,
            chunk_size=chunk_size,
        )
        backend.assert_close(out, expected, dtype=dtype, scale=10.0 if dtype == "float32" else 1.0)


def test_batched_hidden(backend):
    arrays, options = problem("everything", seed=1, batch=(2, 4))
    dtype = backend.float_dtypes[-1]
    out = call(al.linear_cross_entropy, on(backend, arrays, dtype), on(backend, options, dtype), chunk_size=3)
    backend.assert_close(out, reference_loss(arrays, options, "none"), dtype=dtype)


def test_half_precision_accumulates_in_float32(backend):
    half = [d for d in ("float16", "bfloat16") if d in backend.float_dtypes]
    if not half:
        pytest.skip(f"{backend.name} has no half precision on {backend.device}")
    arrays, options = problem("plain", seed=2)
    for dtype in half:
        on_backend = on(backend, arrays, dtype)
        rounded = {
            k: backend.to_numpy(v) if k != "labels" and v is not None else v for k, v in on_backend.items()
        }
        rounded["labels"] = arrays["labels"]
        out = call(al.linear_cross_entropy, on_backend, options, reduction="mean", chunk_size=2)
        backend.assert_close(out, reference_loss(rounded, options, "mean"), dtype=dtype)


def expected_gradients(arrays: dict[str, Any], options: dict[str, Any], reduction: str) -> dict[str, Any]:
    """Central finite differences of ``sum(reference loss)`` for hidden, weight and bias."""
    names = ["hidden", "weight"] + (["bias"] if arrays["bias"] is not None else [])
    grads = {}
    for name in names:

        def total(x: np.ndarray, name: str = name) -> float:
            return float(np.sum(reference_loss({**arrays, name: x}, options, reduction)))

        grads[name] = ref.numeric_gradient(total, arrays[name])
    return grads


@pytest.mark.parametrize("chunk_size", [1, 3, None])
@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("case", ["plain", "everything"])
def test_value_and_grad_matches_finite_differences(backend, case, reduction, chunk_size):
    if "float64" not in backend.float_dtypes:
        pytest.skip(f"{backend.name} has no float64 on {backend.device}")
    arrays, options = problem(case, seed=3)
    value, grads = call(
        linear_cross_entropy_value_and_grad,
        on(backend, arrays, "float64"),
        on(backend, options, "float64"),
        reduction=reduction,
        chunk_size=chunk_size,
    )
    backend.assert_close(value, reference_loss(arrays, options, reduction), dtype="float64")
    expected = expected_gradients(arrays, options, reduction)
    assert len(grads) == len(expected)
    for grad, (name, numeric) in zip(grads, expected.items(), strict=True):
        got = backend.check_result(grad, dtype="float64", shape=arrays[name].shape)
        np.testing.assert_allclose(got, numeric, rtol=1e-6, atol=1e-8, err_msg=name)


def test_value_and_grad_registered(backend):
    if "float64" not in backend.float_dtypes:
        pytest.skip(f"{backend.name} has no float64 on {backend.device}")
    arrays, options = problem("bias", seed=4)
    value, grads = call(
        al.value_and_grad(al.linear_cross_entropy),
        on(backend, arrays, "float64"),
        options,
        reduction="sum",
        chunk_size=2,
    )
    backend.assert_close(value, reference_loss(arrays, options, "sum"), dtype="float64")
    expected = expected_gradients(arrays, options, "sum")
    for grad, (name, numeric) in zip(grads, expected.items(), strict=True):
        got = backend.check_result(grad, dtype="float64", shape=arrays[name].shape)
        np.testing.assert_allclose(got, numeric, rtol=1e-6, atol=1e-8, err_msg=name)


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_torch_backward_matches_finite_differences(backend, reduction):
    if backend.name != "torch":
        pytest.skip("loss.backward() is PyTorch's")
    arrays, options = problem("everything", seed=5)
    leaves = {
        name: backend.asarray(value).requires_grad_(True)
        for name, value in arrays.items()
        if name != "labels" and value is not None
    }
    on_backend = {**on(backend, arrays, "float64"), **leaves}
    loss = call(
        al.linear_cross_entropy,
        on_backend,
        on(backend, options, "float64"),
        reduction=reduction,
        chunk_size=2,
    )
    backend.assert_close(loss, reference_loss(arrays, options, reduction), dtype="float64")
    loss.sum().backward()
    for name, numeric in expected_gradients(arrays, options, reduction).items():
        got = backend.check_result(leaves[name].grad, dtype="float64", shape=arrays[name].shape)
        np.testing.assert_allclose(got, numeric, rtol=1e-6, atol=1e-8, err_msg=name)


def test_jax_autodiff_matches_finite_differences(backend):
    if backend.name != "jax":
        pytest.skip("jax.grad is JAX's")
    import jax

    arrays, options = problem("everything", seed=6)
    on_backend = on(backend, arrays, "float64")
    on_options = on(backend, options, "float64")

    def total(hidden: Any, weight: Any, bias: Any) -> Any:
        parts = {**on_backend, "hidden": hidden, "weight": weight, "bias": bias}
        return call(al.linear_cross_entropy, parts, on_options, reduction="mean", chunk_size=3)

    grads = jax.grad(total, argnums=(0, 1, 2))(on_backend["hidden"], on_backend["weight"], on_backend["bias"])
    for grad, (name, numeric) in zip(grads, expected_gradients(arrays, options, "mean").items(), strict=True):
        got = backend.check_result(grad, dtype="float64", shape=arrays[name].shape)
        np.testing.assert_allclose(got, numeric, rtol=1e-6, atol=1e-8, err_msg=name)


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"weight": np.zeros((CLASSES, FEATURES + 1))}, ValueError, "weight must have shape"),
        ({"bias": np.zeros(CLASSES + 1)}, ValueError, "bias must have shape"),
        ({"labels": np.zeros(ROWS + 1, dtype=np.int64)}, ValueError, "labels has shape"),
        (
            {"hidden": np.zeros((ROWS, FEATURES), dtype=np.int64)},
            TypeError,
            "hidden must have a real floating",
        ),
    ],
)
def test_bad_arguments_name_them(backend, change, error, message):
    arrays, _ = problem("plain")
    arrays = {**arrays, **change}
    with pytest.raises(error, match=message):
        call(al.linear_cross_entropy, on(backend, arrays, backend.float_dtypes[-1]), {})
