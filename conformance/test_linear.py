"""linear_cross_entropy: the float64 reference's cross entropy of ``hidden @ weight.T + bias``.

Values for every option, reduction and chunk size; gradients of hidden, weight and
bias against central finite differences of the reference; PyTorch's
``loss.backward()`` and JAX's autodiff (``jit(value_and_grad)`` for every option, with
respect to the weights too; ``vmap(grad)``, ``grad`` of ``grad``) against the same
numbers or JAX's autodiff of a plain composition; XLA's temporary memory against the
materialised logits'; argument errors.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

import numpy as np
import pytest
import reference as ref
from conftest import repeated
from hypothesis import strategies as st
from test_properties import backend_property

import arrayloss as al
from arrayloss._linear import linear_cross_entropy_value_and_grad

ROWS, FEATURES, CLASSES = 7, 3, 5
CHUNKS = [repeated(1), 3, 7, 100, None]
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
    "softcap": {"bias": True, "weights": True, "class_weights": True, "softcap": 1.5},
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


def check_value_and_grad(backend, case: str, seed: int, rows: int, reduction: str, chunk_size: Any) -> None:
    """``linear_cross_entropy_value_and_grad``'s value and gradients of hidden, weight and bias for a
    problem of ``rows`` rows against the reference and its central finite differences."""
    if "float64" not in backend.float_dtypes:
        pytest.skip(f"{backend.name} has no float64 on {backend.device}")
    arrays, options = problem(case, seed=seed, batch=(rows,))
    given = {"reduction": reduction, "chunk_size": chunk_size}
    on_backend = on(backend, arrays, "float64"), on(backend, options, "float64")
    value, grads = call(linear_cross_entropy_value_and_grad, *on_backend, **given)
    backend.assert_close(value, reference_loss(arrays, options, reduction), dtype="float64")
    expected = expected_gradients(arrays, options, reduction)
    assert len(grads) == len(expected)
    for grad, (name, numeric) in zip(grads, expected.items(), strict=True):
        got = backend.check_result(grad, dtype="float64", shape=arrays[name].shape)
        np.testing.assert_allclose(got, numeric, rtol=1e-6, atol=1e-8, err_msg=name)


@pytest.mark.parametrize("chunk_size", [repeated(1), 3, None])
@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("case", ["plain", "everything"])
def test_value_and_grad_matches_finite_differences(backend, case, reduction, chunk_size):
    check_value_and_grad(backend, case, 3, ROWS, reduction, chunk_size)


@backend_property(
    case=st.sampled_from(sorted(OPTIONS)),
    rows=st.integers(1, 9),
    chunk_size=st.none() | st.integers(1, 10),
    reduction=st.sampled_from(["none", "sum", "mean"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_problems_match_finite_differences(backend, case, rows, chunk_size, reduction, seed):
    """Random rows, options and chunk sizes (one chunk, several, a last one shorter)."""
    check_value_and_grad(backend, case, seed, rows, reduction, chunk_size)


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


@pytest.mark.parametrize("garbage", [np.nan, np.inf])
def test_hidden_rows_of_weight_zero_may_hold_anything(backend, garbage):
    """A row of weight 0 whose hidden values are NaN or inf: the loss and the gradients of every
    input are those of the batch with that row's values replaced (its gradient 0), on every path
    (``value_and_grad``, PyTorch's autograd, ``jax.grad``), with no warning."""
    if "float64" not in backend.float_dtypes:
        pytest.skip(f"{backend.name} has no float64 on {backend.device}")
    arrays, options = problem("everything", seed=8)  # the first row has weight 0
    dirty = {**arrays, "hidden": arrays["hidden"].copy()}
    dirty["hidden"][0] = garbage
    clean = {**arrays, "hidden": arrays["hidden"].copy()}
    clean["hidden"][0] = 0.0
    expected = expected_gradients(clean, options, "mean")
    assert not expected["hidden"][0].any()
    on_backend, given = on(backend, dirty, "float64"), on(backend, options, "float64")
    fns = {"value_and_grad": al.value_and_grad(al.linear_cross_entropy)}
    names = ("hidden", "weight", "bias")
    if backend.name == "torch":

        def autograd(hidden: Any, weight: Any, labels: Any, *, bias: Any, **options: Any) -> Any:
            leaves = [a.clone().requires_grad_() for a in (hidden, weight, bias)]
            value = al.linear_cross_entropy(leaves[0], leaves[1], labels, bias=leaves[2], **options)
            value.backward()
            return value, tuple(leaf.grad for leaf in leaves)

        fns["torch autograd"] = autograd
    if backend.name == "jax":
        jax = importlib.import_module("jax")

        def jax_grad(hidden: Any, weight: Any, labels: Any, *, bias: Any, **options: Any) -> Any:
            def total(h: Any, w: Any, b: Any) -> Any:
                return al.linear_cross_entropy(h, w, labels, bias=b, **options)

            return jax.value_and_grad(total, argnums=(0, 1, 2))(hidden, weight, bias)

        fns["jax.grad"] = jax_grad
    for path, fn in fns.items():
        value, grads = call(fn, on_backend, given, reduction="mean", chunk_size=3)
        backend.assert_close(value, reference_loss(clean, options, "mean"), dtype="float64")
        for name, grad in zip(names, grads, strict=True):
            got = backend.check_result(grad, dtype="float64", shape=arrays[name].shape)
            np.testing.assert_allclose(got, expected[name], rtol=1e-6, atol=1e-8, err_msg=f"{path}: {name}")


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


def jax_reference(jnp: Any, hidden: Any, weight: Any, labels: Any) -> Any:
    """The summed cross entropy of ``hidden @ weight.T`` in plain ``jax.numpy``, for JAX to differentiate."""
    logits = hidden @ weight.T
    shift = jnp.max(logits, axis=-1, keepdims=True)
    lse = jnp.log(jnp.sum(jnp.exp(logits - shift), axis=-1)) + shift[:, 0]
    return jnp.sum(lse - jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0])


@pytest.mark.backend("jax")
@pytest.mark.parametrize("chunk_size", [3, None])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("case", sorted(OPTIONS))
def test_jax_jit_value_and_grad_matches_finite_differences(backend, case, reduction, chunk_size):
    """``jit(value_and_grad)`` with respect to hidden, weight, bias, weights and class weights, for a
    cotangent that is not 1 (the custom VJP scales the gradients of the fused pass by it)."""
    jax = importlib.import_module("jax")
    jnp = backend.module
    arrays, options = problem(case, seed=7)
    cotangent = np.arange(1.0, ROWS + 1) if reduction == "none" else np.asarray(1.5)
    names = [n for n in ("hidden", "weight", "bias") if arrays[n] is not None]
    names += [n for n in ("weights", "class_weights") if n in options]

    def reference_total(name: str, x: np.ndarray) -> float:
        a, o = dict(arrays), dict(options)
        (a if name in a else o)[name] = x
        return float(np.sum(cotangent * reference_loss(a, o, reduction)))

    on_arrays, on_options = on(backend, arrays, "float64"), on(backend, options, "float64")

    def total(*values: Any) -> Any:
        a, o = dict(on_arrays), dict(on_options)
        for name, value in zip(names, values, strict=True):
            (a if name in a else o)[name] = value
        out = call(al.linear_cross_entropy, a, o, reduction=reduction, chunk_size=chunk_size)
        return jnp.sum(backend.asarray(cotangent) * out)

    given = [on_arrays[n] if n in on_arrays else on_options[n] for n in names]
    value, grads = jax.jit(jax.value_and_grad(total, argnums=tuple(range(len(names)))))(*given)
    backend.assert_close(
        value, np.sum(cotangent * reference_loss(arrays, options, reduction)), dtype="float64"
    )
    for name, grad in zip(names, grads, strict=True):
        start = arrays[name] if name in arrays else options[name]
        numeric = ref.numeric_gradient(functools.partial(reference_total, name), start)
        got = backend.check_result(grad, dtype="float64", shape=start.shape)
        np.testing.assert_allclose(got, numeric, rtol=1e-6, atol=1e-8, err_msg=name)


@pytest.mark.backend("jax")
def test_jax_vmap_grad_and_second_order(backend):
    """Per-example gradients (``jit(vmap(grad))``) and a Hessian-vector product (``grad`` of ``grad``)
    against JAX's autodiff of the plain ``jax.numpy`` composition."""
    jax = importlib.import_module("jax")
    jnp = backend.module
    arrays, _ = problem("plain", seed=8, batch=(4, ROWS))
    hidden, weight, labels = (backend.asarray(arrays[n]) for n in ("hidden", "weight", "labels"))

    def ours(h: Any, w: Any, y: Any) -> Any:
        return al.linear_cross_entropy(h, w, y, reduction="sum", chunk_size=3)

    def theirs(h: Any, w: Any, y: Any) -> Any:
        return jax_reference(jnp, h, w, y)

    grads = [
        jax.jit(jax.vmap(jax.grad(f, argnums=(0, 1)), (0, None, 0)))(hidden, weight, labels)
        for f in (ours, theirs)
    ]
    for got, expected in zip(*grads, strict=True):
        backend.assert_close(got, backend.to_numpy(expected), dtype="float64")
    direction = backend.asarray(np.random.default_rng(9).normal(size=arrays["weight"].shape))

    def hessian_vector(f: Any) -> Any:
        return jax.grad(lambda w: jnp.vdot(jax.grad(f, argnums=1)(hidden[0], w, labels[0]), direction))(
            weight
        )

    backend.assert_close(hessian_vector(ours), backend.to_numpy(hessian_vector(theirs)), dtype="float64")


@pytest.mark.backend("jax")
def test_jax_forward_mode_is_refused(backend):
    """A ``custom_vjp`` has no forward mode: JAX's TypeError, as the docstring says (the other losses
    support ``jax.jvp``: ``test_autodiff.test_jax_forward_mode_and_second_order``)."""
    jax = importlib.import_module("jax")
    arrays, _ = problem("plain", seed=9)
    hidden, weight, labels = (backend.asarray(arrays[n]) for n in ("hidden", "weight", "labels"))
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(lambda h: al.linear_cross_entropy(h, weight, labels, reduction="mean"), (hidden,), (hidden,))


@pytest.mark.backend("jax")
@pytest.mark.parametrize(
    ("reduction", "differentiated"), [("mean", "parameters"), ("none", "parameters"), ("mean", "weights")]
)
def test_jax_jit_gradient_keeps_one_chunk_of_logits(backend, reduction, differentiated):
    """XLA's temporary memory of ``jit(value_and_grad)`` is at most a quarter of the materialised
    logits' composition: the chunk loop keeps one chunk of logits alive, in both passes."""
    jax = importlib.import_module("jax")
    jnp = backend.module
    rows, features, classes, chunk = 512, 16, 2000, 32
    rng = np.random.default_rng(10)
    hidden = backend.asarray(rng.normal(size=(rows, features)), "float32")
    weight = backend.asarray(rng.normal(size=(classes, features)), "float32")
    labels = backend.asarray(rng.integers(0, classes, size=rows))
    weights = backend.asarray(rng.uniform(size=rows), "float32")
    argnums = (0, 1, 2) if differentiated == "weights" else (0, 1)

    def ours(h: Any, w: Any, ew: Any) -> Any:
        out = al.linear_cross_entropy(h, w, labels, weights=ew, reduction=reduction, chunk_size=chunk)
        return jnp.sum(out)

    def materialised(h: Any, w: Any, ew: Any) -> Any:
        logits = h @ w.T
        losses = (
            jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
        )
        return jnp.sum(ew * losses)

    def temporary_bytes(f: Any) -> int:
        compiled = jax.jit(jax.value_and_grad(f, argnums=argnums)).lower(hidden, weight, weights).compile()
        return int(compiled.memory_analysis().temp_size_in_bytes)

    ours_bytes, theirs_bytes = temporary_bytes(ours), temporary_bytes(materialised)
    assert theirs_bytes >= rows * classes * 4, "the materialised version holds the logits"
    assert ours_bytes <= theirs_bytes / 4, f"{ours_bytes} bytes against {theirs_bytes} materialised"
