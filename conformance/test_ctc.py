"""``ctc_loss`` against a brute-force sum over all alignments, PyTorch's ``F.ctc_loss`` and optax.

Values and gradients on every backend (the analytic alpha-beta rule through
``value_and_grad``, PyTorch autograd and JAX's custom VJP), lengths of 0, infeasible
sequences, ``zero_infinity``, every reduction, garbage in masked frames and labels,
half precision, and Dask's laziness.
"""

from __future__ import annotations

import importlib
import math
from typing import Any

import numpy as np
import pytest
import reference as ref
from conftest import repeated
from test_autodiff import DYNAMO_WARNINGS, compile_fullgraph, compiling
from test_grad import GRAD_TOLERANCE, label_dtype, needs, no_compute, rounded

import arrayloss as al
from arrayloss.compat import optax as compat_optax
from arrayloss.compat import torch as compat_torch

REDUCTIONS = ("none", "sum", "mean")


def tiny_case(name: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Logits ``[B, T<=4, C=3]``, labels and options small enough for :func:`reference.ctc`."""
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    logits = rng.normal(size=(3, 4, 3)) * 2
    labels = np.array([[1, 1], [2, 1], [1, 2]])
    options: dict[str, Any] = {}
    if name == "lengths":  # label length 0, a repeat needing its blank, logit length 0 with no labels
        options = {"logit_lengths": np.array([4, 0, 3]), "label_lengths": np.array([2, 0, 1])}
    elif name == "blank_last":  # the blank is the last class
        labels = np.array([[0, 0], [1, 0], [0, 1]])
        options = {"blank": 2, "logit_lengths": np.array([4, 2, 3])}
    elif name == "blank_middle":  # the blank is neither the first nor the last class
        labels = np.array([[0, 2], [2, 2], [0, 0]])
        options = {"blank": 1, "label_lengths": np.array([2, 1, 2])}
    elif name == "infeasible":  # [1, 1] needs 3 frames, gets 2: inf, or 0 with zero_infinity
        options = {"logit_lengths": np.array([2, 4, 1]), "label_lengths": np.array([2, 2, 1])}
    return logits, labels, options


TINY = ("plain", "lengths", "blank_last", "blank_middle", "infeasible")


def on_backend(backend, logits: np.ndarray, labels: np.ndarray, options: dict[str, Any], dtype: str):
    index = label_dtype(backend)
    converted = {k: backend.asarray(v, index) if isinstance(v, np.ndarray) else v for k, v in options.items()}
    return backend.asarray(logits, dtype), backend.asarray(labels, index), converted


@pytest.mark.parametrize("dtype", ["float64", repeated("float32")])
@pytest.mark.parametrize("zero_infinity", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", TINY)
def test_matches_brute_force(backend, name, reduction, zero_infinity, dtype):
    """Values against the sum over all paths; gradients against its finite differences (lazily on Dask)."""
    needs(backend, dtype)
    logits, labels, options = tiny_case(name)
    logits = rounded(backend, logits, dtype)
    options = {**options, "reduction": reduction, "zero_infinity": zero_infinity}
    z, y, given = on_backend(backend, logits, labels, options, dtype)
    with no_compute(backend):
        value, grad = al.value_and_grad(al.ctc_loss)(z, y, **given)
    expected = ref.ctc(logits, labels, **options)
    backend.assert_close(value, expected, dtype=dtype)
    got = backend.check_result(grad, dtype=dtype, shape=logits.shape)
    unreduced = {**options, "reduction": "none"}
    feasible = np.isfinite(ref.ctc(logits, labels, **unreduced))
    assert all(np.isnan(got[b]).any() for b in np.flatnonzero(~feasible))  # NaN, as PyTorch's
    lengths = options.get("label_lengths", np.full(len(labels), labels.shape[1]))
    scale = 1 / (len(labels) * np.maximum(lengths, 1)) if reduction == "mean" else np.ones(len(labels))
    scale = np.where(feasible, scale, 0.0)

    def total(x: np.ndarray) -> float:
        losses = ref.ctc(x, labels, **unreduced)
        return float(np.sum(scale[feasible] * losses[feasible]))

    numeric = ref.numeric_gradient(total, logits, 1e-5, relative=True)
    rtol, atol = GRAD_TOLERANCE[dtype]
    np.testing.assert_allclose(got[feasible], numeric[feasible], rtol=rtol, atol=atol)


def test_infeasible_gradient_is_nan_on_its_frames(backend):
    """Without zero_infinity an infinite loss has NaN gradients on its frames, 0 past them (PyTorch's)."""
    logits, labels, options = tiny_case("infeasible")
    z, y, given = on_backend(backend, logits, labels, options, "float64")
    _, grad = al.value_and_grad(al.ctc_loss)(z, y, **given)
    got = backend.to_numpy(grad)
    assert np.isfinite(got[1:]).all()  # [2, 1] in 4 frames, [1] in 1 frame
    assert np.isnan(got[0, :2]).all() and (got[0, 2:] == 0).all()  # [1, 1] in 2 frames


def random_batch(seed: int, batch=6, time=12, classes=5, width=4):
    """Random logits, labels (padding -1) and lengths: 0 among them, infeasible ones, repeats."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(batch, time, classes)) * 2
    labels = rng.integers(1, classes, size=(batch, width))
    labels[0, :2] = 2  # a repeat
    logit_lengths = rng.integers(0, time + 1, size=batch)
    label_lengths = rng.integers(0, width + 1, size=batch)
    logit_lengths[:3] = [time, 0, 2]
    label_lengths[:3] = [width, 0, width]  # the third: 2 frames for 4 labels, infeasible
    labels[np.arange(width)[None, :] >= label_lengths[:, None]] = -1
    return logits, labels, logit_lengths, label_lengths


@pytest.mark.backend("torch")
@pytest.mark.parametrize("zero_infinity", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_torch(backend, seed, reduction, zero_infinity):
    """Values and autograd gradients (through the rule) against ``F.ctc_loss`` on time-major log-probs."""
    torch = backend.module
    functional = importlib.import_module("torch.nn.functional")
    logits, labels, logit_lengths, label_lengths = random_batch(seed)
    z = backend.asarray(logits).requires_grad_()
    ours = al.ctc_loss(
        z,
        backend.asarray(labels),
        logit_lengths=backend.asarray(logit_lengths),
        label_lengths=backend.asarray(label_lengths),
        reduction=reduction,
        zero_infinity=zero_infinity,
    )
    (grad,) = torch.autograd.grad(ours.sum(), z)
    peer = backend.asarray(logits).requires_grad_()
    theirs = functional.ctc_loss(
        torch.log_softmax(peer, -1).transpose(0, 1),
        backend.asarray(np.where(labels < 0, 1, labels)),
        backend.asarray(logit_lengths),
        backend.asarray(label_lengths),
        reduction=reduction,
        zero_infinity=zero_infinity,
    )
    (expected,) = torch.autograd.grad(theirs.sum(), peer)
    np.testing.assert_allclose(backend.to_numpy(ours), backend.to_numpy(theirs), rtol=1e-10)
    np.testing.assert_allclose(backend.to_numpy(grad), backend.to_numpy(expected), rtol=1e-9, atol=1e-12)


@pytest.mark.backend("jax")
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_optax(backend, seed):
    """Values and gradients against ``optax.ctc_loss`` (paddings; infeasible sequences left out:
    optax gives a large finite value there)."""
    optax = pytest.importorskip("optax")
    jax = importlib.import_module("jax")
    jnp = backend.module
    logits, labels, logit_lengths, label_lengths = random_batch(seed)
    keep = np.isfinite(
        al.ctc_loss(logits, np.maximum(labels, 0), logit_lengths=logit_lengths, label_lengths=label_lengths)
    )
    logits, labels, logit_lengths, label_lengths = (
        logits[keep],
        labels[keep],
        logit_lengths[keep],
        label_lengths[keep],
    )
    logit_paddings = (np.arange(logits.shape[1])[None, :] >= logit_lengths[:, None]).astype(float)
    label_paddings = (np.arange(labels.shape[1])[None, :] >= label_lengths[:, None]).astype(float)
    y, a, b = jnp.asarray(labels), jnp.asarray(logit_lengths), jnp.asarray(label_lengths)

    def ours(x):
        return al.ctc_loss(x, y, logit_lengths=a, label_lengths=b).sum()

    def theirs(x):
        return optax.ctc_loss(
            x, jnp.asarray(logit_paddings), jnp.maximum(y, 0), jnp.asarray(label_paddings)
        ).sum()

    value, grad = jax.value_and_grad(ours)(jnp.asarray(logits))
    expected, expected_grad = jax.value_and_grad(theirs)(jnp.asarray(logits))
    np.testing.assert_allclose(float(value), float(expected), rtol=1e-9)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(expected_grad), rtol=1e-7, atol=1e-9)


@pytest.mark.backend("jax")
def test_jax_jit_grad_vmap(backend):
    """Under jit (lax.scan loops, the custom VJP), grad and vmap: the numbers of the eager NumPy rule."""
    jax = importlib.import_module("jax")
    jnp = backend.module
    logits, labels, logit_lengths, label_lengths = random_batch(3)
    logits, labels, logit_lengths, label_lengths = (
        logits[3:],
        labels[3:],
        logit_lengths[3:],
        label_lengths[3:],
    )
    options = {"logit_lengths": logit_lengths, "label_lengths": label_lengths}
    value, grad = al.value_and_grad(al.ctc_loss)(logits, labels, reduction="mean", **options)
    y, a, b = jnp.asarray(labels), jnp.asarray(logit_lengths), jnp.asarray(label_lengths)

    def mean(x):
        return al.ctc_loss(x, y, logit_lengths=a, label_lengths=b, reduction="mean")

    jitted = jax.jit(jax.value_and_grad(mean))(jnp.asarray(logits))
    np.testing.assert_allclose(float(jitted[0]), float(value), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(jitted[1]), grad, rtol=1e-10, atol=1e-14)

    def one(x, y, a, b):
        return al.ctc_loss(x[None], y[None], logit_lengths=a[None], label_lengths=b[None])[0]

    per = jax.jit(jax.vmap(jax.value_and_grad(one)))(jnp.asarray(logits), y, a, b)
    unreduced, unreduced_grad = al.value_and_grad(al.ctc_loss)(logits, labels, **options)
    np.testing.assert_allclose(np.asarray(per[0]), unreduced, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(per[1]), unreduced_grad, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("reduction", ["none", repeated("sum"), repeated("mean")])
def test_masked_garbage_is_ignored(backend, reduction):
    """NaN and inf in frames past logit_lengths and labels past label_lengths: the same loss, a gradient
    of exactly 0 on those frames."""
    logits, labels, logit_lengths, label_lengths = random_batch(2)
    feasible = [0, 1, 3, 4, 5]
    logits, labels = logits[feasible], labels[feasible]
    logit_lengths, label_lengths = logit_lengths[feasible], label_lengths[feasible]
    options = {"logit_lengths": logit_lengths, "label_lengths": label_lengths, "reduction": reduction}
    clean = al.value_and_grad(al.ctc_loss)(logits, np.maximum(labels, 0), **options)
    past = np.arange(logits.shape[1])[None, :] >= logit_lengths[:, None]
    dirty = logits.copy()
    dirty[past] = np.where(np.arange(logits.shape[2]) % 2 == 0, np.nan, np.inf)
    garbage = np.where(labels < 0, 10**6, labels)
    z, y, given = on_backend(backend, dirty, garbage, options, "float64")
    with no_compute(backend):
        value, grad = al.value_and_grad(al.ctc_loss)(z, y, **given)
    backend.assert_close(value, clean[0], dtype="float64")
    got = backend.check_result(grad, dtype="float64", shape=logits.shape)
    assert (got[past] == 0).all()
    np.testing.assert_allclose(got, clean[1], rtol=1e-10, atol=1e-14)


def barred_case() -> tuple[np.ndarray, np.ndarray, dict[str, Any], tuple[np.ndarray, np.ndarray]]:
    """The tiny "lengths" case with logits of ``-inf`` (classes a model rules out) in frames that
    are read: the value and gradient of :func:`reference.ctc`, whose numeric gradient is 0 there."""
    logits, labels, options = tiny_case("lengths")
    logits[0, 1:3, 2] = -math.inf  # labels [1, 1]: class 2 is on no path
    logits[2, 0, 2] = -math.inf  # labels [1]: 2 is on none either
    logits[2, 1, 1] = -math.inf  # the label's class, barred in one frame of three
    expected = ref.ctc(logits, labels, **options, reduction="sum")
    numeric = ref.numeric_gradient(lambda x: float(ref.ctc(x, labels, **options, reduction="sum")), logits)
    return logits, labels, options, (expected, numeric)


def test_classes_barred_by_minus_inf_logits(backend):
    """Logits of ``-inf`` in frames that are read: the loss of the other classes, a gradient of
    exactly 0 on those logits, finite elsewhere."""
    logits, labels, options, (expected, numeric) = barred_case()
    z, y, given = on_backend(backend, logits, labels, options, "float64")
    value, grad = al.value_and_grad(al.ctc_loss)(z, y, **given, reduction="sum")
    backend.assert_close(value, expected, dtype="float64")
    got = backend.check_result(grad, dtype="float64", shape=logits.shape)
    assert (got[logits == -math.inf] == 0).all()
    np.testing.assert_allclose(got, numeric, rtol=1e-6, atol=1e-8)


@pytest.fixture(params=["handed_over", "log_softmax_backward"])
def torch_ctc_gradient(request, monkeypatch):
    """The two gradients of the hand-off to ``F.ctc_loss``: PyTorch's CTC gradient handed over as
    the logits' (where it is, as on the pinned version), or autograd through the log-softmax (where a
    PyTorch returns the log-probabilities' own)."""
    if request.param == "log_softmax_backward":
        torch_ops = importlib.import_module("arrayloss._lib._torch")
        monkeypatch.setattr(torch_ops, "ctc_gradient_is_logits_gradient", lambda device="cpu": False)
    return request.param


@pytest.mark.backend("torch")
@pytest.mark.parametrize("garbage", ["nan_inf", "finite"])
@pytest.mark.parametrize("label_type", ["int64", "int32", "int16"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_torch_autograd_ignores_masked_garbage(backend, reduction, label_type, garbage, torch_ctc_gradient):
    """Through autograd (on the delegated path, ``F.ctc_loss``, too): NaN, inf or large finite values
    in frames past logit_lengths and garbage labels past label_lengths give the loss and gradient of
    the clean inputs (NumPy's rule), exactly 0 on those frames."""
    torch = backend.module
    logits, labels, logit_lengths, label_lengths = random_batch(2)
    feasible = [0, 1, 3, 4, 5]
    logits, labels = logits[feasible], labels[feasible]
    logit_lengths, label_lengths = logit_lengths[feasible], label_lengths[feasible]
    options = {"logit_lengths": logit_lengths, "label_lengths": label_lengths, "reduction": reduction}
    clean_value, clean_grad = al.value_and_grad(al.ctc_loss)(logits, np.maximum(labels, 0), **options)
    past = np.arange(logits.shape[1])[None, :] >= logit_lengths[:, None]
    dirty = logits.copy()
    fill = [np.nan, np.inf] if garbage == "nan_inf" else [1e4, -3e4]
    dirty[past] = np.where(np.arange(logits.shape[2]) % 2 == 0, *fill)
    garbage_labels = np.where(labels < 0, 10**4, labels)
    z = backend.asarray(dirty).requires_grad_()
    given = {k: backend.asarray(v) if isinstance(v, np.ndarray) else v for k, v in options.items()}
    value = al.ctc_loss(z, backend.asarray(garbage_labels, label_type), **given)
    (grad,) = torch.autograd.grad(value.sum(), z)
    backend.assert_close(value, clean_value, dtype="float64")
    got = backend.check_result(grad, dtype="float64", shape=logits.shape)
    assert (got[past] == 0).all()
    np.testing.assert_allclose(got, clean_grad, rtol=1e-10, atol=1e-14)


@pytest.mark.backend("torch")
def test_torch_autograd_of_barred_classes(backend, torch_ctc_gradient):
    """Logits of ``-inf`` in frames that are read, through autograd on the delegated path too: the
    log-probabilities handed to ``F.ctc_loss`` keep them at ``-inf``, and their gradient is 0."""
    torch = backend.module
    logits, labels, options, (expected, numeric) = barred_case()
    z = backend.asarray(logits).requires_grad_()
    _, y, given = on_backend(backend, logits, labels, options, "float64")
    value = al.ctc_loss(z, y, **given, reduction="sum")
    (grad,) = torch.autograd.grad(value, z)
    backend.assert_close(value, expected, dtype="float64")
    got = backend.check_result(grad, dtype="float64", shape=logits.shape)
    assert (got[logits == -math.inf] == 0).all()
    np.testing.assert_allclose(got, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.backend("torch")
@pytest.mark.parametrize("reduction", REDUCTIONS)  # the hand-off takes F.ctc_loss's own reduction
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_torch_paths_agree(backend, dtype, reduction, configure, torch_ctc_gradient):
    """The hand-off to ``F.ctc_loss`` and the array-API recursion: the same values and gradients (half
    precision: both in float32, rounded to the logits' dtype), an infeasible sequence among them."""
    torch = backend.module
    logits, labels, logit_lengths, label_lengths = random_batch(10, batch=5, time=20, classes=7, width=5)
    arguments = (backend.asarray(np.maximum(labels, 0)),)
    given = {"logit_lengths": backend.asarray(logit_lengths), "label_lengths": backend.asarray(label_lengths)}
    results = []
    for delegate in (True, False):
        configure(delegate_to_torch=delegate)
        z = backend.asarray(logits, dtype).requires_grad_()
        value = al.ctc_loss(z, *arguments, reduction=reduction, zero_infinity=True, **given)
        results.append((value, *torch.autograd.grad(value.sum(), z)))
    tolerances = {"float32": (1e-4, 1e-6), "float64": (1e-12, 1e-15), "float16": (1e-3, 1e-4)}
    rtol, atol = tolerances.get(dtype, (8e-3, 1e-3))
    for delegated, standard in zip(*results, strict=True):
        assert delegated.dtype == standard.dtype == getattr(torch, dtype)
        np.testing.assert_allclose(
            backend.to_numpy(delegated), backend.to_numpy(standard), rtol=rtol, atol=atol
        )


@pytest.mark.backend("torch")
def test_torch_second_backward_pass(backend, torch_ctc_gradient):
    """``retain_graph=True``: a second backward pass through the hand-off adds PyTorch's gradient
    (``F.ctc_loss`` of the ``log_softmax``, through autograd) again."""
    torch = backend.module
    logits, labels, logit_lengths, label_lengths = random_batch(11, batch=4, time=12, classes=6, width=4)
    labels, lengths = backend.asarray(np.maximum(labels, 0)), backend.asarray(logit_lengths)
    label_lengths = backend.asarray(label_lengths)
    z = backend.asarray(logits).requires_grad_()
    value = al.ctc_loss(z, labels, logit_lengths=lengths, label_lengths=label_lengths, reduction="sum")
    value.backward(retain_graph=True)
    first = backend.to_numpy(z.grad).copy()
    value.backward()
    x = backend.asarray(logits).requires_grad_()
    log_probs = torch.log_softmax(x, -1).transpose(0, 1)
    torch.nn.functional.ctc_loss(log_probs, labels, lengths, label_lengths, reduction="sum").backward()
    expected = backend.to_numpy(x.grad)
    assert np.isfinite(expected).any()
    np.testing.assert_allclose(first, expected, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(backend.to_numpy(z.grad), 2 * expected, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_accumulates_in_float32(backend, dtype):
    """Half-precision logits: the result in their dtype, computed in float32 from the held values."""
    needs(backend, dtype)
    logits, labels, logit_lengths, label_lengths = random_batch(4, time=30, width=6)
    keep = [0, 1, 3, 4, 5]
    logits, labels = rounded(backend, logits[keep] * 4, dtype), np.maximum(labels[keep], 0)
    options = {"logit_lengths": logit_lengths[keep], "label_lengths": label_lengths[keep], "reduction": "sum"}
    expected, expected_grad = al.value_and_grad(al.ctc_loss)(logits, labels, **options)
    z, y, given = on_backend(backend, logits, labels, options, dtype)
    value, grad = al.value_and_grad(al.ctc_loss)(z, y, **given)
    tolerance = {"float16": 1e-3, "bfloat16": 8e-3}[dtype]
    got = backend.check_result(value, dtype=dtype, shape=())
    np.testing.assert_allclose(got, expected, rtol=tolerance)
    got_grad = backend.check_result(grad, dtype=dtype, shape=logits.shape)
    np.testing.assert_allclose(got_grad, expected_grad, rtol=0, atol=tolerance * 4)


def test_empty_shapes(backend):
    """No frames and no labels: loss 0 (label length 0 needs no frame); no labels over frames: the
    probability of all blanks."""
    z = backend.asarray(np.zeros((2, 0, 3)))
    y = backend.asarray(np.zeros((2, 0), dtype=np.int64), label_dtype(backend))
    value, grad = al.value_and_grad(al.ctc_loss)(z, y)
    backend.assert_close(value, [0.0, 0.0], dtype="float64")
    assert backend.check_result(grad, dtype="float64", shape=(2, 0, 3)).size == 0
    z = backend.asarray(np.zeros((2, 3, 3)))
    backend.assert_close(al.ctc_loss(z, y, reduction="mean"), 3 * math.log(3), dtype="float64")


def test_inputs_unchanged(backend):
    logits, labels, logit_lengths, label_lengths = random_batch(5)
    z, y = backend.asarray(logits), backend.asarray(labels)
    a, b = backend.asarray(logit_lengths), backend.asarray(label_lengths)
    al.value_and_grad(al.ctc_loss)(z, y, logit_lengths=a, label_lengths=b, zero_infinity=True)
    np.testing.assert_array_equal(backend.to_numpy(z), logits)
    np.testing.assert_array_equal(backend.to_numpy(y), labels)


@pytest.mark.parametrize("path", ["default", "composition", "per_example"])
def test_infeasible_gradient_is_nan_on_every_autodiff_path(backend, path, configure):
    """Without ``zero_infinity``, an infeasible sequence's gradient is NaN on its frames and 0 past
    them, the others' finite, on each path of the backend's autodiff: the default (PyTorch's kernels
    or the rule), the composition differentiated through the recursion, and per-example gradients
    (``vmap`` of ``grad``)."""
    logits, labels, options = tiny_case("infeasible")  # the first sequence: 2 frames for [1, 1]
    if backend.name == "torch":
        torch = backend.module

        def per_example(z, y, a, b):
            def one(z1, y1, a1, b1):
                return al.ctc_loss(z1[None], y1[None], logit_lengths=a1[None], label_lengths=b1[None]).sum()

            return torch.func.vmap(torch.func.grad(one))(z, y, a, b)

        def default(z, y, a, b):
            z = z.clone().requires_grad_()
            al.ctc_loss(z, y, logit_lengths=a, label_lengths=b, reduction="sum").backward()
            return z.grad
    elif backend.name == "jax":
        jax = importlib.import_module("jax")

        def per_example(z, y, a, b):
            def one(z1, y1, a1, b1):
                return al.ctc_loss(z1[None], y1[None], logit_lengths=a1[None], label_lengths=b1[None]).sum()

            return jax.vmap(jax.grad(one))(z, y, a, b)

        def default(z, y, a, b):
            return jax.grad(lambda q: al.ctc_loss(q, y, logit_lengths=a, label_lengths=b, reduction="sum"))(z)
    else:
        pytest.skip("the autodiff of PyTorch and JAX")
    if path == "composition":
        configure(analytic_backward=False, delegate_to_torch=False)
    z, y, given = on_backend(backend, logits, labels, options, "float64")
    fn = per_example if path == "per_example" else default
    got = backend.check_result(
        fn(z, y, given["logit_lengths"], given["label_lengths"]), dtype="float64", shape=logits.shape
    )
    assert np.isnan(got[0, :2]).all() and (got[0, 2:] == 0).all()
    assert np.isfinite(got[1:]).all()


def test_unchecked_label_out_of_range_gives_nan(backend):
    """On arrays whose values are not read (JAX, Dask, GPU): a used label out of range makes its
    sequence's loss NaN, the others' right; eager arrays raise (``bad_inputs.py``)."""
    if backend.eager:
        pytest.skip("eager arrays raise: bad_inputs.py")
    logits, labels, options = tiny_case("lengths")
    bad = labels.copy()
    bad[0, 1] = 7
    bad[2, 1] = 9  # past its label length: ignored
    z, y, given = on_backend(backend, logits, bad, options, "float64")
    got = backend.to_numpy(al.ctc_loss(z, y, **given))
    assert np.isnan(got[0])
    np.testing.assert_allclose(got[1:], ref.ctc(logits, labels, **options)[1:], rtol=1e-10)
    # Its gradient too is NaN (as the sparse losses' of a label out of range), the others' finite.
    with no_compute(backend):
        _, grad = al.value_and_grad(al.ctc_loss)(z, y, **given)
    got = backend.check_result(grad, dtype="float64", shape=logits.shape)
    assert np.isnan(got[0]).all() and np.isfinite(got[1:]).all()


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_unchecked_lengths_are_clamped(backend, reduction):
    """On arrays whose values are not read: lengths past the frames or the labels' columns, and
    negative ones, are read as clamped to ``[0, T]`` and ``[0, S]`` (values and gradients)."""
    if backend.eager:
        pytest.skip("eager arrays raise: bad_inputs.py")
    logits, labels, _ = tiny_case("plain")
    options = {"zero_infinity": True, "reduction": reduction}
    given = {"logit_lengths": np.array([9, 4, -1]), "label_lengths": np.array([2, 5, 1])}
    clamped = {"logit_lengths": np.array([4, 4, 0]), "label_lengths": np.array([2, 2, 1])}
    z, y, arrays = on_backend(backend, logits, labels, given, "float64")
    value, grad = al.value_and_grad(al.ctc_loss)(z, y, **arrays, **options)
    expected, expected_grad = al.value_and_grad(al.ctc_loss)(logits, labels, **clamped, **options)
    backend.assert_close(value, expected, dtype="float64")
    got = backend.check_result(grad, dtype="float64", shape=logits.shape)
    np.testing.assert_allclose(got, expected_grad, rtol=1e-9, atol=1e-12)


@pytest.mark.backend("torch")
@pytest.mark.parametrize("zero_infinity", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_compat_torch_matches_f_ctc_loss(backend, reduction, zero_infinity):
    """``compat.torch.ctc_loss`` on PyTorch's own arguments: values and gradients w.r.t. ``log_probs``."""
    torch = backend.module
    functional = importlib.import_module("torch.nn.functional")
    compat = importlib.import_module("arrayloss.compat.torch")
    logits, labels, logit_lengths, label_lengths = random_batch(6)
    log_probs = torch.log_softmax(backend.asarray(logits), -1).transpose(0, 1).detach()
    targets = backend.asarray(np.where(labels < 0, 1, labels))
    arguments = (targets, backend.asarray(logit_lengths), backend.asarray(label_lengths))
    options = {"reduction": reduction, "zero_infinity": zero_infinity}
    ours_in, theirs_in = log_probs.clone().requires_grad_(), log_probs.clone().requires_grad_()
    ours = compat.ctc_loss(ours_in, *arguments, **options)
    theirs = functional.ctc_loss(theirs_in, *arguments, **options)
    (grad,) = torch.autograd.grad(ours.sum(), ours_in)
    (expected,) = torch.autograd.grad(theirs.sum(), theirs_in)
    np.testing.assert_allclose(backend.to_numpy(ours), backend.to_numpy(theirs), rtol=1e-10)
    np.testing.assert_allclose(backend.to_numpy(grad), backend.to_numpy(expected), rtol=1e-9, atol=1e-12)


def torch_layouts(seed: int) -> dict[str, tuple[np.ndarray, ...]]:
    """PyTorch's other layouts of ``ctc_loss``'s arguments: ``(log_probs, targets, input_lengths,
    target_lengths)`` with concatenated 1-D targets (batched), and unbatched ``(T, C)`` inputs with 1-D
    targets and lengths of shape ``()`` and ``(1,)``."""
    logits, labels, logit_lengths, label_lengths = random_batch(seed)
    log_probs = logits - np.log(np.sum(np.exp(logits), axis=-1, keepdims=True))
    time_major = np.ascontiguousarray(np.transpose(log_probs, (1, 0, 2)))
    used = np.arange(labels.shape[1])[None, :] < label_lengths[:, None]
    concatenated = labels[labels >= 0]
    single = np.maximum(labels[0], 1)
    assert used[0].all() and logit_lengths[0] == logits.shape[1]
    return {
        "concatenated": (time_major, concatenated, logit_lengths, label_lengths),
        "unbatched-0d": (time_major[:, 0], single, np.array(logits.shape[1]), np.array(len(single))),
        "unbatched-1": (time_major[:5, 0], single[:2], np.array([5]), np.array([2])),
    }


@pytest.mark.backend("torch")
@pytest.mark.parametrize("zero_infinity", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("layout", ["concatenated", "unbatched-0d", "unbatched-1"])
def test_compat_torch_other_layouts_match_f_ctc_loss(backend, layout, reduction, zero_infinity):
    """Concatenated targets and unbatched inputs, as ``F.ctc_loss`` takes them: values, their shapes,
    and gradients w.r.t. ``log_probs``; lengths as tensors and as tuples of ints."""
    torch = backend.module
    functional = importlib.import_module("torch.nn.functional")
    compat = importlib.import_module("arrayloss.compat.torch")
    log_probs, targets, input_lengths, target_lengths = torch_layouts(14)[layout]
    options = {"reduction": reduction, "zero_infinity": zero_infinity}
    for as_tuple in (False, True):
        lengths = [
            tuple(int(n) for n in np.atleast_1d(a)) if as_tuple else backend.asarray(a)
            for a in (input_lengths, target_lengths)
        ]
        ours_in = backend.asarray(log_probs).requires_grad_()
        theirs_in = backend.asarray(log_probs).requires_grad_()
        ours = compat.ctc_loss(ours_in, backend.asarray(targets), *lengths, **options)
        theirs = functional.ctc_loss(theirs_in, backend.asarray(targets), *lengths, **options)
        assert tuple(ours.shape) == tuple(theirs.shape)
        (grad,) = torch.autograd.grad(ours.sum(), ours_in)
        (expected,) = torch.autograd.grad(theirs.sum(), theirs_in)
        np.testing.assert_allclose(backend.to_numpy(ours), backend.to_numpy(theirs), rtol=1e-10)
        np.testing.assert_allclose(backend.to_numpy(grad), backend.to_numpy(expected), rtol=1e-9, atol=1e-12)
    if layout == "concatenated":  # PyTorch's rule: exactly sum(target_lengths) labels
        longer = backend.asarray(np.concatenate([targets, [1]]))
        with pytest.raises(ValueError, match=r"sum\(target_lengths\) = 14 labels, got 15"):
            compat.ctc_loss(backend.asarray(log_probs), longer, *lengths, **options)


@pytest.mark.parametrize("layout", ["concatenated", "unbatched-0d", "unbatched-1"])
def test_compat_torch_other_layouts_on_every_backend(backend, layout):
    """The same layouts on every backend (concatenated targets laid out as wide as all of them where
    values are not read): ``F.ctc_loss``'s values."""
    torch = pytest.importorskip("torch")
    functional = importlib.import_module("torch.nn.functional")
    compat = importlib.import_module("arrayloss.compat.torch")
    log_probs, targets, input_lengths, target_lengths = torch_layouts(15)[layout]
    expected = functional.ctc_loss(
        *(torch.asarray(a) for a in (log_probs, targets, input_lengths, target_lengths)), reduction="none"
    ).numpy()
    index = label_dtype(backend)
    arguments = [backend.asarray(log_probs)] + [
        backend.asarray(a, index) for a in (targets, input_lengths, target_lengths)
    ]
    with no_compute(backend):
        got = compat.ctc_loss(*arguments, reduction="none")
    backend.assert_close(got, expected, dtype="float64")


@pytest.mark.backend("jax")
def test_compat_optax_matches_optax(backend):
    """``compat.optax.ctc_loss`` on optax's arguments (paddings), feasible sequences: values and gradients."""
    optax = pytest.importorskip("optax")
    jax = importlib.import_module("jax")
    jnp = backend.module
    compat = importlib.import_module("arrayloss.compat.optax")
    logits, labels, logit_lengths, label_lengths = random_batch(7)
    keep = np.isfinite(
        al.ctc_loss(logits, np.maximum(labels, 0), logit_lengths=logit_lengths, label_lengths=label_lengths)
    )
    logits, labels = jnp.asarray(logits[keep]), jnp.asarray(np.maximum(labels[keep], 0))
    logit_paddings = jnp.asarray(
        np.arange(logits.shape[1])[None, :] >= logit_lengths[keep][:, None], "float64"
    )
    label_paddings = jnp.asarray(
        np.arange(labels.shape[1])[None, :] >= label_lengths[keep][:, None], "float64"
    )
    for blank_id in (0, 4):
        y = jnp.where(labels == blank_id, 1 if blank_id == 0 else 0, labels)  # no label is the blank

        def ours(x, y=y, blank_id=blank_id):
            return compat.ctc_loss(x, logit_paddings, y, label_paddings, blank_id=blank_id).sum()

        def theirs(x, y=y, blank_id=blank_id):
            return optax.ctc_loss(x, logit_paddings, y, label_paddings, blank_id=blank_id).sum()

        value, grad = jax.value_and_grad(ours)(logits)
        expected, expected_grad = jax.value_and_grad(theirs)(logits)
        np.testing.assert_allclose(float(value), float(expected), rtol=1e-9)
        np.testing.assert_allclose(np.asarray(grad), np.asarray(expected_grad), rtol=1e-7, atol=1e-9)


def paddings_of(logits: np.ndarray, labels: np.ndarray, logit_lengths, label_lengths) -> list[np.ndarray]:
    """optax's paddings (1.0 past each sequence's end) of the frames and the labels."""
    return [
        (np.arange(n)[None, :] >= lengths[:, None]).astype(np.float64)
        for n, lengths in ((logits.shape[1], logit_lengths), (labels.shape[1], label_lengths))
    ]


@pytest.mark.backend("jax")
@pytest.mark.parametrize("log_epsilon", [-1e5, -30.0, -1.0])
@pytest.mark.parametrize("seed", [11])
def test_compat_optax_log_epsilon_matches_optax(backend, seed, log_epsilon):
    """Infeasible sequences included (optax's large finite loss), repeats, lengths of 0: values and
    gradients of ``optax.ctc_loss`` for its ``log_epsilon``, under ``jax.jit``."""
    optax = pytest.importorskip("optax")
    jax = importlib.import_module("jax")
    jnp = backend.module
    compat = importlib.import_module("arrayloss.compat.optax")
    logits, labels, logit_lengths, label_lengths = random_batch(seed)
    labels = np.maximum(labels, 1)
    paddings = [jnp.asarray(p) for p in paddings_of(logits, labels, logit_lengths, label_lengths)]
    y = jnp.asarray(labels)
    infeasible = ~np.isfinite(
        al.ctc_loss(logits, labels, logit_lengths=logit_lengths, label_lengths=label_lengths)
    )
    assert infeasible.any()

    def ours(x):
        return compat.ctc_loss(x, paddings[0], y, paddings[1], log_epsilon=log_epsilon)

    def theirs(x):
        return optax.ctc_loss(x, paddings[0], y, paddings[1], log_epsilon=log_epsilon)

    z = jnp.asarray(logits)
    value, expected = jax.jit(ours)(z), theirs(z)
    assert np.isfinite(np.asarray(value)).all()
    np.testing.assert_allclose(np.asarray(value), np.asarray(expected), rtol=1e-10, atol=1e-12)
    grad = jax.jit(jax.grad(lambda x: ours(x).sum()))(z)
    expected_grad = jax.grad(lambda x: theirs(x).sum())(z)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(expected_grad), rtol=1e-7, atol=1e-9)


def test_compat_optax_infeasible_on_every_backend(backend):
    """optax's large finite losses of infeasible sequences on every backend (optax computed in JAX's
    default float32)."""
    optax = pytest.importorskip("optax")
    jnp = importlib.import_module("jax.numpy")
    compat = importlib.import_module("arrayloss.compat.optax")
    logits, labels, logit_lengths, label_lengths = random_batch(13)
    labels = np.maximum(labels, 1)
    paddings = paddings_of(logits, labels, logit_lengths, label_lengths)
    expected = optax.ctc_loss(
        *(jnp.asarray(a, "float32") for a in (logits, paddings[0])), labels, paddings[1]
    )
    assert (np.asarray(expected) > 1e4).any()
    z, y = backend.asarray(logits), backend.asarray(labels, label_dtype(backend))
    with no_compute(backend):
        got = compat.ctc_loss(z, backend.asarray(paddings[0]), y, backend.asarray(paddings[1]))
    got = backend.check_result(got, dtype="float64", shape=(len(labels),))
    np.testing.assert_allclose(got, np.asarray(expected, np.float64), rtol=1e-5)


def test_compat_adapters_on_every_backend(backend):
    """The adapters' layouts and lengths: the numbers of ``ctc_loss`` itself."""
    compat_torch = importlib.import_module("arrayloss.compat.torch")
    compat_optax = importlib.import_module("arrayloss.compat.optax")
    logits, labels, logit_lengths, label_lengths = random_batch(8, batch=4, time=6)
    labels = np.maximum(labels, 0)
    options = {"logit_lengths": logit_lengths, "label_lengths": label_lengths}
    expected = al.ctc_loss(logits, labels, **options)
    z, y, given = on_backend(backend, logits, labels, options, "float64")
    time_major = backend.asarray(np.ascontiguousarray(np.transpose(logits, (1, 0, 2))))
    got = compat_torch.ctc_loss(
        time_major, y, given["logit_lengths"], given["label_lengths"], reduction="none"
    )
    backend.assert_close(got, expected, dtype="float64")
    paddings = [
        backend.asarray(np.arange(n)[None, :] >= lengths[:, None], "float64")
        for n, lengths in ((logits.shape[1], logit_lengths), (labels.shape[1], label_lengths))
    ]
    got = compat_optax.ctc_loss(z, paddings[0], y, paddings[1])
    got = backend.check_result(got, dtype="float64", shape=expected.shape)
    feasible = np.isfinite(expected)
    np.testing.assert_allclose(got[feasible], expected[feasible], rtol=1e-10)
    assert (got[~feasible] > 1e4).all()  # optax's log_epsilon: large and finite


@pytest.mark.backend("torch", "jax")
def test_autodiff_of_the_composition_matches_the_rule(backend):
    """With the rule off (``analytic_backward=False``), and under ``torch.func.vmap``, the library
    differentiates the recursion itself: the same gradient, no NaN from unreachable states."""
    settings = importlib.import_module("arrayloss._lib._settings").settings
    logits, labels, logit_lengths, label_lengths = random_batch(9)
    labels = np.maximum(labels, 0)
    keep = np.isfinite(al.ctc_loss(logits, labels, logit_lengths=logit_lengths, label_lengths=label_lengths))
    logits, labels = logits[keep], labels[keep]
    options = {"logit_lengths": logit_lengths[keep], "label_lengths": label_lengths[keep]}
    expected = al.value_and_grad(al.ctc_loss)(logits, labels, reduction="sum", **options)[1]
    z, y, given = on_backend(backend, logits, labels, options, "float64")

    def total(x):
        return al.ctc_loss(x, y, reduction="sum", **given)

    if backend.name == "torch":
        torch = backend.module
        z.requires_grad_(True)
        with settings(analytic_backward=False):
            (grad,) = torch.autograd.grad(total(z), z)

        def one(x, y, a, b):
            return al.ctc_loss(x[None], y[None], logit_lengths=a[None], label_lengths=b[None])[0]

        per_sequence = torch.func.vmap(torch.func.grad(one))(z.detach(), y, *given.values())
        np.testing.assert_allclose(backend.to_numpy(per_sequence), expected, rtol=1e-10, atol=1e-14)
    else:
        jax = importlib.import_module("jax")
        with settings(analytic_backward=False):
            grad = jax.grad(total)(z)
    np.testing.assert_allclose(backend.to_numpy(grad), expected, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("reverse", [False, True])
def test_scan_row_blocks_order(backend, reverse):
    """The seam's loop (CTC's beta recursion runs it in reverse): blocks of 2 of 5 rows, the partial
    block last or first, outputs in row order; under ``jax.jit`` the ``lax.scan`` path."""
    ops = importlib.import_module("arrayloss._lib._backends").ops_for(backend.xp)
    rows = np.arange(10.0).reshape(5, 2)

    def running(x):
        def fn(carry, block):
            total = carry + backend.xp.sum(block)
            return total, (block + carry,)

        start = backend.xp.zeros((), dtype=x.dtype, device=backend.device)
        return ops.scan_row_blocks(fn, start, (x,), 2, reverse=reverse)

    order = [[4], [2, 3], [0, 1]] if reverse else [[0, 1], [2, 3], [4]]
    expected, carry = np.zeros_like(rows), 0.0
    for block in order:
        expected[block] = rows[block] + carry
        carry += rows[block].sum()
    x = backend.asarray(rows)
    outcomes = [running(x)]
    if backend.name == "jax":
        outcomes.append(importlib.import_module("jax").jit(running)(x))
    for total, (out,) in outcomes:
        np.testing.assert_allclose(backend.to_numpy(total), carry)
        np.testing.assert_allclose(backend.to_numpy(out), expected)


def test_logaddexp_is_stable_on_every_backend(backend):
    """The seam's ``logaddexp`` (the recursions' step), the standard formula and the backend's own: no
    underflow at -200 or overflow at 100 in float32, -inf where both are, no warning."""
    backends = importlib.import_module("arrayloss._lib._backends")
    ops_module = importlib.import_module("arrayloss._lib._ops")
    a = np.array([-200.0, -10.0, 50.0, 100.0, -np.inf, -np.inf, 3.0])
    b = np.array([-200.0, -12.0, 50.0, 100.0, -np.inf, -1.0, -np.inf])
    dtype = "float32"
    for ops in (backends.ops_for(backend.xp), ops_module.Ops(backend.xp)):
        got = ops.logaddexp(backend.asarray(a, dtype), backend.asarray(b, dtype))
        backend.assert_close(got, np.logaddexp(a, b), dtype=dtype)


def _paddings(lengths, width: int):
    return (lengths.new_tensor(range(width))[None, :] >= lengths[:, None]).double()


COMPILED = {
    "ctc_loss": lambda z, y, a, b: al.ctc_loss(z, y, logit_lengths=a, label_lengths=b, reduction="mean"),
    "compat.torch": lambda z, y, a, b: compat_torch.ctc_loss(
        z.transpose(0, 1), y, a, b, reduction="sum", zero_infinity=True
    ),
    "compat.torch-concatenated": lambda z, y, a, b: compat_torch.ctc_loss(
        z.transpose(0, 1), y, a, b, reduction="mean"
    ),
    "compat.optax": lambda z, y, a, b: compat_optax.ctc_loss(
        z, _paddings(a, z.shape[1]), y, _paddings(b, y.shape[1])
    ),
}


@pytest.mark.backend("torch")
@pytest.mark.filterwarnings(*DYNAMO_WARNINGS)
@pytest.mark.parametrize("name", list(COMPILED))
def test_torch_compile_fullgraph(backend, name):
    """``torch.compile(fullgraph=True)``, forward and backward: the values and gradients of eager
    PyTorch (``F.ctc_loss``'s, delegated). Compiled, ``ctc_loss`` and ``compat.torch`` are one
    operator running ``F.ctc_loss``'s kernels; ``compat.optax`` (``log_epsilon``) is the rule through
    the autograd Function, the recursion unrolled over frames. Inductor compiles ``ctc_loss``; the
    adapters are compiled with ``"aot_eager"`` (:func:`~test_autodiff.compile_fullgraph`: 15-25 s
    less each, cold)."""
    torch = compiling(backend)
    logits, labels, options = tiny_case("lengths")  # 3 sequences of at most 4 frames: compiled quickly
    logit_lengths, label_lengths = options["logit_lengths"], options["label_lengths"]
    if name == "compat.torch-concatenated":
        labels = labels[np.arange(2)[None, :] < label_lengths[:, None]]
    y, a, b = (backend.asarray(v) for v in (labels, logit_lengths, label_lengths))
    loss = COMPILED[name]

    def total(z, *targets):
        return torch.sum(loss(z, *targets))

    compiled = compile_fullgraph(torch, total, inductor=name == "ctc_loss")
    assert_compiled_matches_eager(backend, compiled, total, logits, y, a, b)


def assert_compiled_matches_eager(backend, compiled, eager, logits: np.ndarray, *targets) -> None:
    """The value of ``compiled(z, *targets)`` (a scalar) and its gradient: those of ``eager``."""
    z_compiled, z_eager = (backend.asarray(logits).requires_grad_() for _ in range(2))
    value, expected = compiled(z_compiled, *targets), eager(z_eager, *targets)
    value.backward()
    expected.backward()
    np.testing.assert_allclose(backend.to_numpy(value), backend.to_numpy(expected), rtol=1e-10)
    np.testing.assert_allclose(
        backend.to_numpy(z_compiled.grad), backend.to_numpy(z_eager.grad), rtol=1e-9, atol=1e-12
    )


@pytest.mark.backend("torch")
@pytest.mark.filterwarnings(*DYNAMO_WARNINGS)
def test_torch_compile_fullgraph_of_the_recursion(backend, configure):
    """``delegate_to_torch=False``: the array-API recursion compiled (``"aot_eager"``), forward and
    backward, gives the brute force's values and the eager rule's gradients."""
    torch = compiling(backend)
    configure(delegate_to_torch=False)
    logits, labels, options = tiny_case("lengths")
    y, a, b = (backend.asarray(v) for v in (labels, options["logit_lengths"], options["label_lengths"]))
    loss = COMPILED["ctc_loss"]
    z = backend.asarray(logits).requires_grad_()
    value = compile_fullgraph(torch, loss, inductor=False)(z, y, a, b)
    value.backward()
    expected, expected_grad = al.value_and_grad(al.ctc_loss)(logits, labels, **options, reduction="mean")
    backend.assert_close(value, expected, dtype="float64")
    np.testing.assert_allclose(backend.to_numpy(z.grad), expected_grad, rtol=1e-9, atol=1e-12)


@pytest.mark.backend("torch")
@pytest.mark.filterwarnings(*DYNAMO_WARNINGS)
@pytest.mark.parametrize("zero_infinity", [False, True])
def test_torch_compiled_operator_on_unchecked_inputs(backend, zero_infinity, torch_ctc_gradient):
    """Compiled (the operator, whose labels and lengths are not checked): NaN and inf in frames past
    the logit lengths, a class barred by ``-inf`` in a frame that is read, an infeasible sequence,
    and a used label out of range in another. That sequence's loss and gradient are NaN, the
    others' as NumPy's rule on the clean inputs; gradients are 0 past the lengths and on the barred
    logit."""
    torch = compiling(backend)
    logits, labels, options = tiny_case("infeasible")  # the first sequence is infeasible
    logits[1, 2, 0] = -math.inf  # labels [2, 1] in 4 frames: the blank barred in frame 2
    dirty = logits.copy()
    dirty[2, 1:] = [np.nan, np.inf, -np.inf]  # past the third sequence's single frame
    bad = labels.copy()
    bad[2, 0] = 9  # the third sequence's only label, out of range
    given = {k: v[:2] for k, v in options.items()}
    expected, expected_grad = al.value_and_grad(al.ctc_loss)(
        logits[:2], labels[:2], **given, zero_infinity=zero_infinity
    )
    y, a, b = (backend.asarray(v) for v in (bad, options["logit_lengths"], options["label_lengths"]))

    def losses(z):
        return al.ctc_loss(z, y, logit_lengths=a, label_lengths=b, zero_infinity=zero_infinity)

    z = backend.asarray(dirty).requires_grad_()
    value = compile_fullgraph(torch, losses, inductor=False)(z)
    got = backend.check_result(value, dtype="float64", shape=(3,))
    assert np.isnan(got[2])
    np.testing.assert_allclose(got[:2], expected, rtol=1e-10)
    value.backward(torch.ones_like(value))
    grad = backend.check_result(z.grad, dtype="float64", shape=logits.shape)
    assert grad[1, 2, 0] == 0 and np.isnan(grad[2]).all()
    np.testing.assert_allclose(grad[:2], expected_grad, rtol=1e-9, atol=1e-12)


@pytest.mark.backend("torch")
@pytest.mark.filterwarnings(*DYNAMO_WARNINGS)
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_torch_compiled_clamps_lengths(backend, reduction):
    """Compiled (the operator; the recursion with ``delegate_to_torch=False``), lengths past the
    frames or the labels' columns, and negative ones, are read as clamped to ``[0, T]`` and
    ``[0, S]``, as docs/errors.md says of unchecked lengths."""
    torch = compiling(backend)
    logits, labels, _ = tiny_case("plain")  # 3 sequences of 4 frames, labels of width 2
    given, clamped = ([9, 4, -1], [2, 5, 1]), ([4, 4, 0], [2, 2, 1])
    y = backend.asarray(labels)
    options = {"zero_infinity": True, "reduction": reduction}

    def losses(z, a, b):
        return al.ctc_loss(z, y, logit_lengths=a, label_lengths=b, **options)

    z = backend.asarray(logits).requires_grad_()
    value = compile_fullgraph(torch, losses, inductor=False)(z, *(backend.asarray(v) for v in given))
    value.backward(torch.ones_like(value))
    lengths = {"logit_lengths": np.array(clamped[0]), "label_lengths": np.array(clamped[1])}
    expected, expected_grad = al.value_and_grad(al.ctc_loss)(logits, labels, **lengths, **options)
    got = backend.check_result(value, dtype="float64", shape=(3,) if reduction == "none" else ())
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    np.testing.assert_allclose(backend.to_numpy(z.grad), expected_grad, rtol=1e-9, atol=1e-12)


@pytest.mark.backend("torch")
@pytest.mark.filterwarnings(*DYNAMO_WARNINGS)
def test_torch_compile_dynamic_shapes(backend):
    """``torch.compile(fullgraph=True, dynamic=True)``: a graph of symbolic sizes (the operator's
    outputs sized from them; the recursion on the never-delegated variant) serves batches of
    other sizes, with eager PyTorch's values and gradients."""
    torch = compiling(backend)

    def loss(z, y, a, b):
        return al.ctc_loss(z, y, logit_lengths=a, label_lengths=b, reduction="mean")

    compiled = torch.compile(loss, fullgraph=True, dynamic=True, backend="aot_eager")
    for seed, (batch, time, classes, width) in enumerate([(4, 8, 5, 3), (6, 8, 7, 4)]):
        logits, labels, logit_lengths, label_lengths = random_batch(
            seed, batch=batch, time=time, classes=classes, width=width
        )
        y, a, b = (backend.asarray(v) for v in (np.maximum(labels, 0), logit_lengths, label_lengths))
        assert_compiled_matches_eager(backend, compiled, loss, logits, y, a, b)


@pytest.mark.backend("torch")
@pytest.mark.filterwarnings(*DYNAMO_WARNINGS)
@pytest.mark.parametrize("zero_infinity", [False, True])
def test_torch_operator_passes_opcheck(backend, zero_infinity, torch_ctc_gradient):
    """``torch.library.opcheck`` of the CTC operator: its schema, its fake (the shapes, dtypes and
    strides ``torch.compile`` plans with), its autograd registration, and its values and gradients
    traced by AOTAutograd with dynamic shapes against eager ones (feasible sequences: NaN gradients
    compare unequal)."""
    torch = compiling(backend)
    logits, labels, logit_lengths, label_lengths = random_batch(3)
    keep = [0, 1, 3, 4, 5] if not zero_infinity else list(range(len(labels)))
    arrays = (logits[keep], np.maximum(labels[keep], 0), logit_lengths[keep], label_lengths[keep])
    z, y, a, b = (backend.asarray(v) for v in arrays)
    operator = importlib.import_module("arrayloss._lib._torch")._CTC_LOSSES
    results = torch.library.opcheck(operator, (z.requires_grad_(), y, a, b, 0, zero_infinity))
    assert set(results.values()) == {"SUCCESS"}, results
