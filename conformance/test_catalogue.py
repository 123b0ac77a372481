"""The binary, focal and divergence losses against their peers and at their edges.

Values and gradients against PyTorch (``F.binary_cross_entropy_with_logits``,
torchvision's focal-loss formula, ``F.kl_div``) and optax, over their flags, with
logits of +-30 and +-1e4 and targets of exactly 0 and 1; the stable forms at the
extremes (against float64 references); half precision; masked garbage. The gradient
cases of every backend are in ``test_grad.py``'s ``CASES``.
"""

from __future__ import annotations

import importlib
import itertools

import numpy as np
import pytest
import reference as ref
from hypothesis import strategies as st
from test_grad import GRAD_TOLERANCE, needs, no_compute, rounded
from test_properties import backend_property

import arrayloss as al


def only(backend, name: str):
    if backend.name != name:
        pytest.skip(f"{name}-specific test")
    return backend.module


def binary_problem(seed: int, shape=(6, 5)) -> tuple[np.ndarray, np.ndarray]:
    """Logits of every magnitude (+-30, +-1e4 among them) and targets with exact 0 and 1."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=shape) * 4
    logits.flat[:4] = [30.0, -30.0, 1e4, -1e4]
    targets = rng.uniform(size=shape)
    targets.flat[:4] = [0.0, 1.0, 1.0, 0.0]
    targets.flat[4:8] = [1.0, 0.0, 0.0, 1.0]
    return logits, targets


BCE_FLAGS = [
    dict(zip(("weight", "pos_weight"), flags, strict=True))
    for flags in itertools.product([False, True], repeat=2)
]


@pytest.mark.backend("torch")
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("flags", BCE_FLAGS, ids=lambda f: "-".join(k for k, v in f.items() if v) or "plain")
def test_bce_matches_torch(backend, flags, reduction):
    """Values and gradients of ``F.binary_cross_entropy_with_logits`` (its mean: over the elements)."""
    torch = only(backend, "torch")
    functional = importlib.import_module("torch.nn.functional")
    logits, targets = binary_problem(1)
    weight = np.array([[1.0], [0.0], [2.0], [0.5], [1.0], [3.0]]) if flags["weight"] else None
    pos_weight = np.array([2.0, 0.5, 1.0, 3.0, 1.0]) if flags["pos_weight"] else None
    z, t = backend.asarray(logits), backend.asarray(targets)
    theirs = {"weight": weight, "pos_weight": pos_weight}
    theirs = {k: backend.asarray(v) for k, v in theirs.items() if v is not None}
    ours = {"weights": theirs.get("weight"), "pos_weight": theirs.get("pos_weight")}
    z1, z2 = z.clone().requires_grad_(), z.clone().requires_grad_()
    expected = functional.binary_cross_entropy_with_logits(z2, t, reduction=reduction, **theirs)
    ours_reduction = "sum" if reduction == "mean" else reduction  # PyTorch's mean: the sum over the count
    out = al.sigmoid_binary_cross_entropy(z1, t, reduction=ours_reduction, **ours)
    if reduction == "mean":
        out = out / logits.size
    torch.sum(expected).backward()
    torch.sum(out).backward()
    backend.assert_close(out, backend.to_numpy(expected), dtype="float64")
    backend.assert_close(z1.grad, backend.to_numpy(z2.grad), dtype="float64")


def torchvision_focal(torch, inputs, targets, alpha: float, gamma: float):
    """torchvision.ops.sigmoid_focal_loss, as written there (reduction "none")."""
    functional = importlib.import_module("torch.nn.functional")
    p = torch.sigmoid(inputs)
    ce_loss = functional.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    return loss


@pytest.mark.backend("torch")
@pytest.mark.parametrize(("alpha", "gamma"), [(-1, 2.0), (0.25, 2.0), (0.25, 0.0), (0.5, 1.5), (0.75, 3.0)])
def test_focal_matches_torchvision(backend, alpha, gamma):
    torch = only(backend, "torch")
    logits, targets = binary_problem(2)
    finite = np.abs(logits) < 1e3  # torchvision's formula is not stable at |z| = 1e4 (1 - p_t = 0)
    logits = np.where(finite, logits, np.sign(logits) * 30)
    z, t = backend.asarray(logits), backend.asarray(targets)
    z1, z2 = z.clone().requires_grad_(), z.clone().requires_grad_()
    out = al.sigmoid_focal_loss(z1, t, alpha=None if alpha < 0 else alpha, gamma=gamma)
    expected = torchvision_focal(torch, z2, t, alpha, gamma)
    torch.sum(out).backward()
    torch.sum(expected).backward()
    backend.assert_close(out, backend.to_numpy(expected), dtype="float64")
    backend.assert_close(z1.grad, backend.to_numpy(z2.grad), dtype="float64", scale=10)


@pytest.mark.backend("torch")
@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("reduction", ["none", "sum", "batchmean"])
def test_kl_matches_torch(backend, log_target, reduction):
    torch = only(backend, "torch")
    functional = importlib.import_module("torch.nn.functional")
    rng = np.random.default_rng(3)
    log_p = np.log(rng.dirichlet(np.ones(5), size=4))
    targets = rng.dirichlet(np.ones(5), size=4)
    targets[1] = [0.0, 0.0, 1.0, 0.0, 0.0]
    given = np.log(rng.dirichlet(np.ones(5), size=4)) if log_target else targets
    z, t = backend.asarray(log_p), backend.asarray(given)
    z1, z2 = z.clone().requires_grad_(), z.clone().requires_grad_()
    ours = {"none": "none", "sum": "sum", "batchmean": "mean"}[reduction]
    out = al.kl_divergence(z1, t, log_targets=log_target, reduction=ours)
    expected = functional.kl_div(z2, t, reduction=reduction, log_target=log_target)
    if reduction == "none":  # PyTorch's terms, summed over the classes
        expected = torch.sum(expected, dim=-1)
    torch.sum(out).backward()
    torch.sum(expected).backward()
    backend.assert_close(out, backend.to_numpy(expected), dtype="float64")
    backend.assert_close(z1.grad, backend.to_numpy(z2.grad), dtype="float64")


@pytest.mark.backend("jax")
@pytest.mark.parametrize(
    "name", ["bce", "bce-integer-labels", "focal", "focal-alpha", "kl", "kl-log-targets"]
)
def test_matches_optax(backend, name):
    """Values and ``jax.grad`` under ``jax.jit`` against optax's functions of the same name."""
    only(backend, "jax")
    jax = importlib.import_module("jax")
    optax = importlib.import_module("optax.losses")
    jnp = backend.module
    logits, targets = binary_problem(4)
    if name == "bce-integer-labels":
        targets = (targets > 0.5).astype(np.int64)
    if name.startswith("kl"):
        rng = np.random.default_rng(5)
        logits = np.log(rng.dirichlet(np.ones(5), size=6))
        targets = np.log(rng.dirichlet(np.ones(5), size=6)) if name == "kl-log-targets" else targets
        targets = targets if name == "kl-log-targets" else targets / targets.sum(axis=1, keepdims=True)
    ours, theirs = {
        "bce": (al.sigmoid_binary_cross_entropy, optax.sigmoid_binary_cross_entropy),
        "bce-integer-labels": (al.sigmoid_binary_cross_entropy, optax.sigmoid_binary_cross_entropy),
        "focal": (al.sigmoid_focal_loss, optax.sigmoid_focal_loss),
        "focal-alpha": (
            lambda z, t: al.sigmoid_focal_loss(z, t, alpha=0.25),
            lambda z, t: optax.sigmoid_focal_loss(z, t, alpha=0.25),
        ),
        "kl": (al.kl_divergence, optax.kl_divergence),
        "kl-log-targets": (
            lambda z, t: al.kl_divergence(z, t, log_targets=True),
            optax.kl_divergence_with_log_targets,
        ),
    }[name]
    z, t = backend.asarray(logits), backend.asarray(targets)

    def total(f):
        return jax.jit(jax.value_and_grad(lambda x: jnp.sum(f(x, t))))

    value, grad = total(ours)(z)
    expected_value, expected_grad = total(theirs)(z)
    assert value.dtype == expected_value.dtype and grad.dtype == z.dtype
    backend.assert_close(ours(z, t), backend.to_numpy(theirs(z, t)), dtype="float64")
    backend.assert_close(grad, backend.to_numpy(expected_grad), dtype="float64", scale=10)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("loss", ["bce", "focal"])
def test_extreme_logits_are_exact(backend, dtype, loss):
    """|z| = 1e4 and 30: the loss is z or e^-|z| (no log of 0, no overflow), the gradient 0 or +-1."""
    needs(backend, dtype)
    logits = np.array([1e4, -1e4, 1e4, -1e4, 30.0, -30.0])
    targets = np.array([1.0, 0.0, 0.0, 1.0, 0.0, 0.0])
    function, reference = {
        "bce": (al.sigmoid_binary_cross_entropy, ref.sigmoid_bce),
        "focal": (al.sigmoid_focal_loss, ref.sigmoid_focal),
    }[loss]
    z, t = backend.asarray(logits, dtype), backend.asarray(targets, dtype)
    with no_compute(backend):
        value, grad = al.value_and_grad(function)(z, t)
    backend.assert_close(value, reference(logits, targets), dtype=dtype)
    sigmoid = np.array([1.0, 0.0, 1.0, 0.0, 1.0 / (1.0 + np.exp(-30.0)), 1.0 / (1.0 + np.exp(30.0))])
    if loss == "bce":
        backend.assert_close(grad, sigmoid - targets, dtype=dtype)
    else:
        got = backend.check_result(grad, dtype=dtype, shape=(6,))
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got[:4], [0.0, 0.0, 1.0, -1.0], atol=1e-6)


@pytest.mark.parametrize("gamma", [0.0, 0.25, 0.5, 0.999])
def test_focal_gradient_below_gamma_one_is_exact_near_certainty(backend, gamma):
    """gamma < 1: (1 - p_t)^(gamma - 1) is unbounded as p_t -> 1; the gradient is finite and exact."""
    logits = np.array([8.0, 15.0, 25.0, -8.0, -25.0, 60.0])
    targets = np.array([1.0, 1.0, 1.0, 0.0, 0.0, 1.0])
    dtype = "float64" if "float64" in backend.float_dtypes else "float32"
    with no_compute(backend):
        value, grad = al.value_and_grad(al.sigmoid_focal_loss)(
            backend.asarray(logits, dtype), backend.asarray(targets, dtype), gamma=gamma
        )
    backend.assert_close(value, ref.sigmoid_focal(logits, targets, gamma=gamma), dtype=dtype)
    # d/dz of m^gamma softplus(-z) for t = 1, m = sigmoid(-z), in float64 by hand:
    # m^gamma (-(1 - p) + gamma softplus(-z) (-p))  (the mirror image for t = 0)
    s = np.where(targets == 1, 1.0, -1.0)
    m = 1.0 / (1.0 + np.exp(s * logits))
    softplus = np.log1p(np.exp(-s * logits))
    expected = s * m**gamma * (-m - gamma * softplus * (1.0 - m))
    rtol, atol = GRAD_TOLERANCE[dtype]
    got = backend.check_result(grad, dtype=dtype, shape=(6,))
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol)


@pytest.mark.parametrize("loss", ["bce", "focal", "kl"])
def test_weight_zero_drops_garbage_without_nan(backend, loss):
    """Elements (bce, focal) or examples (kl) of weight 0 with NaN or infinite inputs: no NaN, no
    warning (the suite turns warnings into errors), gradient 0 there."""
    logits = np.array([[0.5, np.nan, -1.0], [np.inf, -np.inf, 2.0], [1.0, 0.0, -0.5]])
    if loss == "kl":
        weights = np.array([1.0, 0.0, 1.0])
        logits = np.log(np.array([[0.2, 0.3, 0.5], [0.1, 0.1, 0.8], [0.6, 0.2, 0.2]]))
        logits[1] = [np.nan, -np.inf, np.inf]
        targets = np.array([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
        function, reference = al.kl_divergence, ref.kl_divergence
        kept = np.array([[True] * 3, [False] * 3, [True] * 3])
    else:
        weights = np.array([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 2.0]])
        targets = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 1.0], [0.3, 0.6, 1.0]])
        function, reference = {
            "bce": (al.sigmoid_binary_cross_entropy, ref.sigmoid_bce),
            "focal": (al.sigmoid_focal_loss, ref.sigmoid_focal),
        }[loss]
        kept = weights != 0
    clean = np.where(np.isfinite(logits), logits, 0.0)
    dtype = "float64" if "float64" in backend.float_dtypes else "float32"
    with no_compute(backend):
        value, grad = al.value_and_grad(function)(
            backend.asarray(logits, dtype),
            backend.asarray(targets, dtype),
            weights=backend.asarray(weights, dtype),
            reduction="mean",
        )
    backend.assert_close(value, reference(clean, targets, weights=weights, reduction="mean"), dtype=dtype)
    got = backend.check_result(grad, dtype=dtype, shape=logits.shape)
    np.testing.assert_array_equal(got[~kept], 0.0)
    assert np.all(np.isfinite(got))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("loss", ["bce", "focal", "kl"])
def test_half_precision_is_accumulated_in_float32(backend, dtype, loss):
    needs(backend, dtype)
    logits, targets = binary_problem(6, shape=(8, 64))
    logits = np.clip(logits, -20, 20)
    if loss == "kl":
        rng = np.random.default_rng(6)
        logits = np.log(rng.dirichlet(np.ones(64), size=8))
        targets = rng.dirichlet(np.ones(64), size=8)
    function, reference = {
        "bce": (al.sigmoid_binary_cross_entropy, ref.sigmoid_bce),
        "focal": (al.sigmoid_focal_loss, ref.sigmoid_focal),
        "kl": (al.kl_divergence, ref.kl_divergence),
    }[loss]
    held = rounded(backend, logits, dtype)
    with no_compute(backend):
        value, grad = al.value_and_grad(function)(
            backend.asarray(held, dtype), backend.asarray(targets, "float32"), reduction="sum"
        )
    # A float32 sum of 512 terms of a half-precision input: the reference sees the rounded input.
    backend.assert_close(value, reference(held, targets, reduction="sum"), dtype=dtype)
    assert backend.check_result(grad, dtype=dtype, shape=held.shape).shape == held.shape


@backend_property(
    z=st.lists(st.floats(-60, 60), min_size=1, max_size=8),
    positive=st.lists(st.booleans(), min_size=8, max_size=8),
)
def test_bce_is_the_two_class_softmax_cross_entropy(backend, z, positive):
    """For a 0/1 target, sigmoid cross entropy of z is softmax cross entropy of the logits (0, z)."""
    logits = np.asarray(z)
    labels = np.asarray(positive[: len(z)], dtype=np.int64)
    dtype = "float64" if "float64" in backend.float_dtypes else "float32"
    x = backend.asarray(logits, dtype)
    binary = al.sigmoid_binary_cross_entropy(x, backend.asarray(labels, "bool"))
    pairs = backend.asarray(np.stack([np.zeros_like(logits), logits], axis=-1), dtype)
    two_class = al.sparse_softmax_cross_entropy(pairs, backend.asarray(labels, "int32"))
    backend.assert_close(binary, backend.to_numpy(two_class), dtype=dtype)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("loss", ["bce", "focal"])
def test_values_in_blocks_of_one_row(backend, loss, reduction, configure):
    """Eager host arrays compute in cache-sized blocks of rows: force one row per block."""
    configure(block_bytes=1)
    logits, targets = binary_problem(7, shape=(3, 4, 5))
    weights = np.array([[1.0], [0.0], [2.0], [0.5]])
    function, reference = {
        "bce": (al.sigmoid_binary_cross_entropy, ref.sigmoid_bce),
        "focal": (al.sigmoid_focal_loss, ref.sigmoid_focal),
    }[loss]
    dtype = "float64" if "float64" in backend.float_dtypes else "float32"
    out = function(
        backend.asarray(logits, dtype),
        backend.asarray(targets, dtype),
        weights=backend.asarray(weights, dtype),
        reduction=reduction,
    )
    backend.assert_close(out, reference(logits, targets, weights=weights, reduction=reduction), dtype=dtype)


@backend_property(
    weights=st.lists(st.floats(0.01, 10), min_size=2, max_size=6),
    other=st.lists(st.floats(0.01, 10), min_size=6, max_size=6),
)
def test_kl_divergence_is_nonnegative_and_zero_on_itself(backend, weights, other):
    """Gibbs' inequality: KL(t || p) >= 0 for distributions, with equality for p = t."""
    t = np.asarray(weights) / np.sum(weights)
    p = np.asarray(other[: len(weights)]) / np.sum(other[: len(weights)])
    dtype = "float64" if "float64" in backend.float_dtypes else "float32"
    pairs = backend.asarray(np.log(np.stack([p, t])), dtype)
    targets = backend.asarray(np.stack([t, t]), dtype)
    got = backend.check_result(al.kl_divergence(pairs, targets), dtype=dtype, shape=(2,))
    tolerance = 1e-12 if dtype == "float64" else 1e-6
    assert got[0] >= -tolerance
    assert abs(got[1]) <= tolerance


@backend_property(
    z=st.lists(st.floats(-50, 50), min_size=1, max_size=8),
    t=st.lists(st.floats(0, 1), min_size=8, max_size=8),
)
def test_focal_loss_without_focusing_is_the_cross_entropy(backend, z, t):
    """gamma = 0 and no alpha: the focal loss is the sigmoid cross entropy, value and gradient."""
    logits, targets = np.asarray(z), np.asarray(t[: len(z)])
    dtype = "float64" if "float64" in backend.float_dtypes else "float32"
    x, y = backend.asarray(logits, dtype), backend.asarray(targets, dtype)
    focal, d_focal = al.value_and_grad(al.sigmoid_focal_loss)(x, y, gamma=0.0, reduction="sum")
    bce, d_bce = al.value_and_grad(al.sigmoid_binary_cross_entropy)(x, y, reduction="sum")
    backend.assert_close(focal, backend.to_numpy(bce), dtype=dtype)
    backend.assert_close(d_focal, backend.to_numpy(d_bce), dtype=dtype)
