"""``arrayloss.compat.torch`` and ``arrayloss.compat.optax``: PyTorch's and optax's conventions on every
backend.

Against the libraries themselves where they are installed (float64, on NumPy copies of
the inputs), and on every backend against float64 references written here from their
documented formulas.
"""

from __future__ import annotations

import importlib
import itertools
import math

import numpy as np
import pytest
import reference as ref

from arrayloss.compat import optax as compat_optax
from arrayloss.compat import torch as compat_torch

IGNORED = -100
RNG = np.random.default_rng(41)
LOGITS = RNG.normal(scale=2.0, size=(6, 5))
LABELS = np.array([0, 4, IGNORED, 2, 2, IGNORED])
CLASS_WEIGHTS = np.array([0.5, 2.0, 1.0, 0.0, 1.5])
PROBABILITIES = RNG.dirichlet(np.ones(5), size=6)


def log_softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    return (
        z - ref.logsumexp(z, axis=axis)[..., None]
        if axis == -1
        else np.moveaxis(log_softmax(np.moveaxis(z, axis, -1)), -1, axis)
    )


def torch_cross_entropy_reference(z, y, weight, smoothing, reduction):
    """PyTorch's documented formula, class indices: (1 - eps) w_y (-log p_y) + eps / C sum_c w_c (-log p_c),
    ignored targets 0; the mean divides by the sum of w_y over the counted targets (NaN for none)."""
    classes = z.shape[1]
    w = np.ones(classes) if weight is None else weight
    log_p = log_softmax(z)
    losses = np.zeros(len(y))
    denominator = 0.0
    for i, label in enumerate(y):
        if label == IGNORED:
            continue
        losses[i] = (1 - smoothing) * w[label] * -log_p[i, label] + smoothing / classes * np.sum(
            w * -log_p[i]
        )
        denominator += w[label]
    if reduction == "none":
        return losses
    if reduction == "sum":
        return np.asarray(losses.sum())
    return np.asarray(math.nan if denominator == 0 else losses.sum() / denominator)


FLAGS = list(itertools.product([None, "weight"], [0.0, 0.2], ["none", "sum", "mean"]))


@pytest.mark.parametrize(("weight", "smoothing", "reduction"), FLAGS)
def test_torch_cross_entropy_class_indices(backend, weight, smoothing, reduction):
    w = CLASS_WEIGHTS if weight else None
    out = compat_torch.cross_entropy(
        backend.asarray(LOGITS),
        backend.asarray(LABELS),
        weight=None if w is None else backend.asarray(w),
        reduction=reduction,
        label_smoothing=smoothing,
    )
    backend.assert_close(
        out, torch_cross_entropy_reference(LOGITS, LABELS, w, smoothing, reduction), dtype="float64"
    )


@pytest.mark.parametrize("weight", [None, "weight"])
def test_torch_cross_entropy_full_smoothing_leaves_the_label_out(backend, weight):
    """At ``label_smoothing=1`` the label's term has weight 0: a label's logit of ``-inf`` gives the
    uniform term's ``+inf`` (mass on a class of probability 0), not ``0 * inf``."""
    z = np.array([[0.0, -math.inf, 1.0], [0.5, 0.0, -0.5]])
    w = CLASS_WEIGHTS[:3] + 1.0 if weight else None
    out = compat_torch.cross_entropy(
        backend.asarray(z),
        backend.asarray(np.array([1, 2])),
        weight=None if w is None else backend.asarray(w),
        reduction="none",
        label_smoothing=1.0,
    )
    uniform = (np.ones(3) if w is None else w) / 3
    expected = [math.inf, float(np.sum(uniform * -log_softmax(z[1:])[0]))]
    backend.assert_close(out, expected, dtype="float64")


def test_torch_cross_entropy_mean_over_nothing_is_nan(backend):
    out = compat_torch.cross_entropy(backend.asarray(LOGITS), backend.asarray(np.full(6, IGNORED)))
    assert np.isnan(backend.check_result(out, dtype="float64", shape=()))


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_torch_cross_entropy_probabilities_on_axis_one(backend, reduction):
    """Probability targets of (N, C, d): the mean divides by N * d, whatever the weights."""
    z = RNG.normal(size=(3, 5, 2))
    t = np.moveaxis(RNG.dirichlet(np.ones(5), size=(3, 2)), -1, 1)
    out = compat_torch.cross_entropy(
        backend.asarray(z),
        backend.asarray(t),
        weight=backend.asarray(CLASS_WEIGHTS),
        reduction=reduction,
        label_smoothing=0.1,
    )
    smoothed = (t * 0.9 + 0.1 / 5) * CLASS_WEIGHTS[None, :, None]
    losses = -np.sum(smoothed * log_softmax(z, axis=1), axis=1)
    backend.assert_close(out, losses if reduction == "none" else losses.mean(), dtype="float64")


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_torch_nll_loss(backend, reduction):
    log_p = log_softmax(LOGITS)
    out = compat_torch.nll_loss(
        backend.asarray(log_p),
        backend.asarray(LABELS),
        weight=backend.asarray(CLASS_WEIGHTS),
        reduction=reduction,
    )
    counted = LABELS != IGNORED
    safe = np.where(counted, LABELS, 0)
    w = np.where(counted, CLASS_WEIGHTS[safe], 0.0)
    losses = -w * log_p[np.arange(6), safe]
    expected = {"none": losses, "sum": losses.sum(), "mean": losses.sum() / w.sum()}[reduction]
    backend.assert_close(out, expected, dtype="float64")


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_torch_binary_cross_entropy_with_logits(backend, reduction):
    """The mean is over the elements, not the weights."""
    targets = (RNG.uniform(size=LOGITS.shape) > 0.5).astype(np.float64)
    weight = RNG.uniform(0.5, 2.0, size=(6, 1))
    pos_weight = RNG.uniform(0.5, 2.0, size=5)
    out = compat_torch.binary_cross_entropy_with_logits(
        backend.asarray(LOGITS),
        backend.asarray(targets),
        weight=backend.asarray(weight),
        reduction=reduction,
        pos_weight=backend.asarray(pos_weight),
    )
    losses = ref.sigmoid_bce(LOGITS, targets, weights=weight, pos_weight=pos_weight)
    backend.assert_close(
        out, {"none": losses, "sum": losses.sum(), "mean": losses.mean()}[reduction], dtype="float64"
    )


@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean", "batchmean"])
def test_torch_kl_div(backend, reduction, log_target):
    log_p = log_softmax(LOGITS)
    targets = PROBABILITIES.copy()
    targets[0] = [0.0, 1.0, 0.0, 0.0, 0.0]
    given = np.log(PROBABILITIES) if log_target else targets
    out = compat_torch.kl_div(
        backend.asarray(log_p), backend.asarray(given), reduction=reduction, log_target=log_target
    )
    t = np.exp(given) if log_target else given
    terms = np.where(t > 0, t * (np.log(np.where(t > 0, t, 1.0)) - log_p), 0.0)
    expected = {"none": terms, "sum": terms.sum(), "mean": terms.mean(), "batchmean": terms.sum() / 6}[
        reduction
    ]
    backend.assert_close(out, expected, dtype="float64")


def test_matches_pytorch_itself(backend):
    """Every adapter against torch.nn.functional on the same float64 values, where torch is installed."""
    torch = pytest.importorskip("torch")
    functional = torch.nn.functional
    t = torch.from_numpy
    targets = (RNG.uniform(size=LOGITS.shape) > 0.5).astype(np.float64)
    log_p = log_softmax(LOGITS)
    for weight, smoothing, reduction in FLAGS:
        options = {"label_smoothing": smoothing, "reduction": reduction}
        w = None if weight is None else CLASS_WEIGHTS
        expected = functional.cross_entropy(
            t(LOGITS), t(LABELS), weight=None if w is None else t(w), **options
        )
        got = compat_torch.cross_entropy(
            backend.asarray(LOGITS),
            backend.asarray(LABELS),
            weight=None if w is None else backend.asarray(w),
            **options,
        )
        backend.assert_close(got, expected.numpy(), dtype="float64")
    expected = functional.cross_entropy(
        t(LOGITS), t(PROBABILITIES), weight=t(CLASS_WEIGHTS), label_smoothing=0.1
    )
    got = compat_torch.cross_entropy(
        backend.asarray(LOGITS),
        backend.asarray(PROBABILITIES),
        weight=backend.asarray(CLASS_WEIGHTS),
        label_smoothing=0.1,
    )
    backend.assert_close(got, expected.numpy(), dtype="float64")
    expected = functional.nll_loss(t(log_p), t(LABELS), weight=t(CLASS_WEIGHTS))
    got = compat_torch.nll_loss(
        backend.asarray(log_p), backend.asarray(LABELS), weight=backend.asarray(CLASS_WEIGHTS)
    )
    backend.assert_close(got, expected.numpy(), dtype="float64")
    pos_weight = np.linspace(0.5, 2.0, 5)
    expected = functional.binary_cross_entropy_with_logits(t(LOGITS), t(targets), pos_weight=t(pos_weight))
    got = compat_torch.binary_cross_entropy_with_logits(
        backend.asarray(LOGITS), backend.asarray(targets), pos_weight=backend.asarray(pos_weight)
    )
    backend.assert_close(got, expected.numpy(), dtype="float64")
    expected = functional.kl_div(t(log_p), t(PROBABILITIES), reduction="batchmean")
    got = compat_torch.kl_div(backend.asarray(log_p), backend.asarray(PROBABILITIES), reduction="batchmean")
    backend.assert_close(got, expected.numpy(), dtype="float64")


# Calls that PyTorch or optax reject: the peer, the function, its arguments and options, and the error of
# the adapter (PyTorch raises RuntimeError where the adapters raise ValueError).
CTC_LOGITS = RNG.normal(size=(2, 3, 5))
REJECTED = {
    "torch-probabilities-smoothing-above-one": (
        "torch",
        "cross_entropy",
        (LOGITS, PROBABILITIES),
        {"label_smoothing": 1.5},
        ValueError,
    ),
    "torch-probabilities-weight-length": (
        "torch",
        "cross_entropy",
        (LOGITS, PROBABILITIES),
        {"weight": CLASS_WEIGHTS[:4]},
        ValueError,
    ),
    "torch-ctc-int-lengths": (
        "torch",
        "ctc_loss",
        (log_softmax(LOGITS[:3]), np.array([1, 2]), 3, 2),
        {},
        TypeError,
    ),
    "optax-ctc-paddings-shapes": (
        "optax",
        "ctc_loss",
        (CTC_LOGITS, np.zeros((2, 2)), np.array([[1, 2], [3, 3]]), np.zeros((2, 1))),
        {},
        ValueError,
    ),
}


@pytest.mark.parametrize("case", list(REJECTED))
def test_rejected_where_the_peer_rejects(backend, case):
    """What the peer library rejects, the adapter rejects too (with an error naming the argument: see
    ``bad_inputs.py``) rather than computing a number."""
    peer, name, arrays, options, error = REJECTED[case]
    if peer == "torch":
        module = pytest.importorskip("torch")
        theirs, ours, convert = module.nn.functional, compat_torch, module.from_numpy
    else:
        pytest.importorskip("optax")
        theirs, ours = importlib.import_module("optax.losses"), compat_optax
        convert = importlib.import_module("jax.numpy").asarray
    with pytest.raises((RuntimeError, TypeError, ValueError)):
        getattr(theirs, name)(
            *(convert(a) if isinstance(a, np.ndarray) else a for a in arrays),
            **{k: convert(v) if isinstance(v, np.ndarray) else v for k, v in options.items()},
        )
    with pytest.raises(error):
        getattr(ours, name)(
            *(backend.asarray(a) if isinstance(a, np.ndarray) else a for a in arrays),
            **{k: backend.asarray(v) if isinstance(v, np.ndarray) else v for k, v in options.items()},
        )


# --- optax


def test_optax_tuple_axes_and_where(backend):
    """Class axes (1, 2) flattened into one; ``where`` without the class axis excludes whole rows."""
    z = RNG.normal(size=(4, 2, 3))
    labels = np.array([0, 5, 2, 3])
    flat = z.reshape(4, 6)
    got = compat_optax.softmax_cross_entropy_with_integer_labels(
        backend.asarray(z), backend.asarray(labels), axis=(1, 2)
    )
    backend.assert_close(got, ref.sparse_ce(flat, labels), dtype="float64")
    mask = np.array(
        [[True, False, True, True, False], [True] * 5, [False] * 5, [True, True, True, True, False]]
    )
    z = RNG.normal(size=(4, 5))
    got = compat_optax.softmax_cross_entropy_with_integer_labels(
        backend.asarray(z), backend.asarray(np.array([0, 1, 2, 3])), where=backend.asarray(mask)
    )
    expected = [
        ref.sparse_ce(z[i][mask[i]][None], np.array([np.flatnonzero(mask[i]).tolist().index(i)]))[0]
        if mask[i].any()
        else 0.0
        for i in range(4)
    ]
    backend.assert_close(got, np.asarray(expected), dtype="float64")
    targets = RNG.dirichlet(np.ones(5), size=4)
    got = compat_optax.softmax_cross_entropy(
        backend.asarray(z), backend.asarray(targets), where=backend.asarray(mask)
    )
    expected = [
        -np.sum(targets[i][mask[i]] * (z[i][mask[i]] - ref.logsumexp(z[i][mask[i]][None])[0]))
        if mask[i].any()
        else 0.0
        for i in range(4)
    ]
    backend.assert_close(got, np.asarray(expected), dtype="float64")
    got = compat_optax.kl_divergence(backend.asarray(log_softmax(z)), backend.asarray(targets), axis=None)
    backend.assert_close(got, np.sum(targets * (np.log(targets) - log_softmax(z))), dtype="float64")


def test_matches_optax_itself(backend):
    """Every adapter against optax on JAX, where optax is installed."""
    pytest.importorskip("optax")
    jnp = importlib.import_module("jax.numpy")
    importlib.import_module("jax").config.update("jax_enable_x64", True)
    losses = importlib.import_module("optax.losses")
    targets = (RNG.uniform(size=LOGITS.shape) > 0.5).astype(np.float64)
    log_p = log_softmax(LOGITS)
    mask = RNG.uniform(size=LOGITS.shape) > 0.3
    mask[:, 0] = True  # the labels below are included
    labels = np.zeros(6, dtype=np.int64)
    calls = [
        ("softmax_cross_entropy", (LOGITS, PROBABILITIES), {}),
        ("softmax_cross_entropy", (LOGITS, PROBABILITIES), {"where": mask}),
        ("softmax_cross_entropy_with_integer_labels", (LOGITS, labels), {"where": mask}),
        ("softmax_cross_entropy_with_integer_labels", (LOGITS.reshape(6, 5, 1), labels), {"axis": (1, 2)}),
        (
            "safe_softmax_cross_entropy",
            (np.where(mask, LOGITS, -np.inf), np.where(mask, PROBABILITIES, 0.0)),
            {},
        ),
        ("sigmoid_binary_cross_entropy", (LOGITS, targets), {}),
        ("sigmoid_focal_loss", (LOGITS, targets), {"alpha": 0.25, "gamma": 1.5}),
        ("kl_divergence", (log_p, PROBABILITIES), {"where": mask}),
        ("kl_divergence_with_log_targets", (log_p, np.log(PROBABILITIES)), {}),
    ]
    for name, arrays, options in calls:
        theirs = getattr(losses, name)(
            *(jnp.asarray(a) for a in arrays),
            **{k: jnp.asarray(v) if isinstance(v, np.ndarray) else v for k, v in options.items()},
        )
        ours = getattr(compat_optax, name)(
            *(backend.asarray(a) for a in arrays),
            **{k: backend.asarray(v) if isinstance(v, np.ndarray) else v for k, v in options.items()},
        )
        backend.assert_close(ours, np.asarray(theirs, dtype=np.float64), dtype="float64")


# --- the peers' own documented examples


def test_optax_documented_examples(backend):
    """optax's docstring examples: ``[0.2761 2.9518]`` for both softmax losses, ``[[6.4587 0.4587]]`` for
    class axes (2, 3) of a (1, 2, 3, 4) ``arange``."""
    logits = backend.asarray(np.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]]), "float32")
    one_hot = backend.asarray(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), "float32")
    expected = np.array([0.2761, 2.9518])
    for out in (
        compat_optax.softmax_cross_entropy(logits, one_hot),
        compat_optax.softmax_cross_entropy_with_integer_labels(logits, backend.asarray(np.array([0, 1]))),
    ):
        got = backend.check_result(out, dtype="float32", shape=(2,))
        np.testing.assert_allclose(got, expected, atol=5e-5)
    shape = (1, 2, 3, 4)
    grid = backend.asarray(np.arange(np.prod(shape)).reshape(shape), "float32")
    labels = np.ravel_multi_index((np.array([[1, 2]]), np.array([[1, 3]])), shape[2:])
    out = compat_optax.softmax_cross_entropy_with_integer_labels(grid, backend.asarray(labels), axis=(2, 3))
    got = backend.check_result(out, dtype="float32", shape=(1, 2))
    np.testing.assert_allclose(got, [[6.4587, 0.4587]], atol=5e-5)


def test_torch_documented_example(backend):
    """``BCEWithLogitsLoss``'s example: 64 classes, batch 10, logits 1.5, targets 1: -log(sigmoid(1.5))."""
    out = compat_torch.binary_cross_entropy_with_logits(
        backend.asarray(np.full((10, 64), 1.5), "float32"),
        backend.asarray(np.ones((10, 64)), "float32"),
        pos_weight=backend.asarray(np.ones(64), "float32"),
    )
    backend.assert_close(out, -math.log(1 / (1 + math.exp(-1.5))), dtype="float32")
