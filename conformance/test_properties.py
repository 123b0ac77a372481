"""Properties of the losses, checked with hypothesis on random shapes and options.

Hypothesis draws shapes, options and a seed; the arrays come from a NumPy generator
with that seed and go to the backend with ``backend.asarray``. Every property is
checked against the float64 reference as well, so a property that holds for a wrong
loss still fails. Shapes include empty batches and a single class.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import reference as ref
from hypothesis import given, settings
from hypothesis import strategies as st
from test_grad import label_dtype

import arrayloss as al

REDUCTIONS = ["none", "sum", "mean"]
IGNORED = -100


@dataclass
class SparseCase:
    """Classes-last NumPy inputs of the integer-label cross entropy and its options."""

    logits: np.ndarray  # batch shape + (C,)
    labels: np.ndarray
    weights: np.ndarray | None
    class_weights: np.ndarray | None
    ignore_index: int | None
    label_smoothing: float
    z_loss: float
    reduction: str
    axis: int  # where the class axis goes

    def options(self) -> dict[str, Any]:
        return {
            "ignore_index": self.ignore_index,
            "label_smoothing": self.label_smoothing,
            "z_loss": self.z_loss,
            "reduction": self.reduction,
        }

    def moved_logits(self) -> np.ndarray:
        return np.moveaxis(self.logits, -1, self.axis)


def backend_property(**strategies: st.SearchStrategy[Any]) -> Callable[[Callable[..., None]], Any]:
    """``hypothesis.given`` for a property of the ``backend`` fixture, with a number of examples for it.

    The test runs the loaded profile's ``max_examples`` ("ci": 60, "fuzz": 2000), a sixth of
    them on JAX, which compiles every operation anew for each shape it meets (60 examples of
    every property take about 3 minutes of CPU there, 10 about 30 seconds), and on ndonnx, whose
    eager arrays build and run an ONNX Runtime session for every operation (about 1 ms each: 60
    examples of every property took 115 of the session's 704 seconds, ``--durations``, loaded
    2-core machine).
    """

    def decorate(prop: Callable[..., None]) -> Callable[[Any], None]:
        def test(backend: Any) -> None:
            count = settings.default.max_examples
            if backend.name in ("jax", "ndonnx"):
                count = max(10, count // 6)
            settings(max_examples=count)(given(**strategies)(prop))(backend=backend)  # anew on every run

        test.__name__, test.__qualname__, test.__doc__ = prop.__name__, prop.__qualname__, prop.__doc__
        return test

    return decorate


batch_shapes = st.lists(st.integers(0, 4), min_size=1, max_size=3).map(tuple)


@st.composite
def broadcast_shape(draw: st.DrawFn, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A shape that broadcasts to ``shape``: trailing dimensions, some of them 1."""
    kept = draw(st.integers(0, len(shape)))
    trailing = shape[len(shape) - kept :]
    return tuple(n if draw(st.booleans()) else 1 for n in trailing)


def random_weights(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Non-negative weights with exact zeros."""
    weights = rng.uniform(0.0, 2.0, size=shape)
    weights[rng.random(shape) < 0.3] = 0.0
    return weights


@st.composite
def sparse_cases(draw: st.DrawFn, reductions: list[str] = REDUCTIONS) -> SparseCase:
    batch = draw(batch_shapes)
    classes = draw(st.integers(1, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    logits = rng.normal(scale=draw(st.sampled_from([0.1, 1.0, 10.0])), size=(*batch, classes))
    labels = rng.integers(0, classes, size=batch)
    ignore_index = draw(st.sampled_from([None, IGNORED, 0]))
    if ignore_index is not None:
        labels[rng.random(batch) < 0.3] = ignore_index
    weights = None
    if draw(st.booleans()):
        weights = random_weights(rng, draw(broadcast_shape(batch)))
    class_weights = rng.uniform(0.0, 3.0, size=classes) if draw(st.booleans()) else None
    return SparseCase(
        logits=logits,
        labels=labels,
        weights=weights,
        class_weights=class_weights,
        ignore_index=ignore_index,
        label_smoothing=draw(st.sampled_from([0.0, 0.1, 1.0]) | st.floats(0.0, 1.0)),
        z_loss=draw(st.sampled_from([0.0, 1e-3]) | st.floats(0.0, 0.5)),
        reduction=draw(st.sampled_from(reductions)),
        axis=draw(st.integers(0, len(batch))),
    )


def sparse_on_backend(backend, case: SparseCase, dtype: str = "float64") -> tuple[Any, np.ndarray]:
    """arrayloss on the backend, and the reference on the values the backend received."""
    logits = backend.asarray(case.moved_logits(), dtype)
    arrays = {
        name: backend.asarray(value, dtype)
        for name, value in (("weights", case.weights), ("class_weights", case.class_weights))
        if value is not None
    }
    out = al.sparse_softmax_cross_entropy(
        logits, backend.asarray(case.labels), axis=case.axis, **arrays, **case.options()
    )
    expected = ref.sparse_ce(
        backend.to_numpy(logits),
        case.labels,
        axis=case.axis,
        **{name: backend.to_numpy(a) for name, a in arrays.items()},
        **case.options(),
    )
    return out, expected


@backend_property(case=sparse_cases(), dtype=st.sampled_from(["float32", "float64"]))
def test_sparse_matches_reference(backend, case, dtype):
    """Random shapes (empty batches, one class), options, reductions and class axes."""
    out, expected = sparse_on_backend(backend, case, dtype)
    backend.assert_close(out, expected, dtype=dtype, scale=max(1.0, math.sqrt(case.labels.size)))


@backend_property(case=sparse_cases())
def test_class_axis_is_moveaxis(backend, case):
    """Any class axis gives the loss of the logits with that axis moved last."""
    out, expected = sparse_on_backend(backend, case)
    last, _ = sparse_on_backend(backend, replace(case, axis=case.logits.ndim - 1))
    backend.assert_close(out, backend.to_numpy(last), dtype="float64")
    backend.assert_close(last, expected, dtype="float64")


@backend_property(
    case=sparse_cases(),
    offset_scale=st.sampled_from([1.0, 100.0, 1000.0]),
    dtype=st.sampled_from(["float32", "float64"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_per_example_constant_changes_nothing(backend, case, offset_scale, dtype, seed):
    """Adding a constant to every logit of an example leaves its cross entropy unchanged.

    With z-loss the loss does change (it penalises lse(z)), so that term is left out.
    """
    case = replace(case, z_loss=0.0)
    offsets = np.random.default_rng(seed).uniform(-offset_scale, offset_scale, size=case.labels.shape)
    unshifted, expected = sparse_on_backend(backend, case, "float64")
    shifted_case = replace(case, logits=case.logits + offsets[..., None])
    shifted, expected_shifted = sparse_on_backend(backend, shifted_case, dtype)
    backend.assert_close(shifted, expected_shifted, dtype=dtype, scale=max(1.0, math.sqrt(case.labels.size)))
    if dtype == "float64":  # rounding z + c costs at most ulp(1000) ~ 1e-13 per logit
        backend.assert_close(shifted, backend.to_numpy(unshifted), dtype="float64")
        np.testing.assert_allclose(expected_shifted, expected, rtol=1e-10, atol=1e-11)


@st.composite
def dropped_examples(draw: st.DrawFn) -> tuple[SparseCase, np.ndarray]:
    """A 1-D batch case with per-example weights (some 0) and garbage logits (NaN, +-inf) where the
    weight is 0; returns the case and the mask of the kept examples."""
    case = draw(sparse_cases(reductions=["sum", "mean"]).filter(lambda c: c.labels.ndim == 1))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    weights = random_weights(rng, case.labels.shape)
    dropped = weights == 0
    garbage = np.asarray([math.nan, math.inf, -math.inf])[rng.integers(0, 3, size=case.logits.shape)]
    logits = np.where(dropped[:, None], garbage, case.logits)
    return replace(case, logits=logits, weights=weights, axis=draw(st.integers(0, 1))), ~dropped


@backend_property(drop=dropped_examples())
def test_zero_weight_is_dropping_the_example(backend, drop):
    """An example of weight 0 counts as if it were not there, even with NaN or infinite logits."""
    case, kept = drop
    out, _ = sparse_on_backend(backend, case)
    kept_case = replace(case, logits=case.logits[kept], labels=case.labels[kept], weights=case.weights[kept])
    without, expected = sparse_on_backend(backend, kept_case)
    assert np.isfinite(expected)
    backend.assert_close(out, expected, dtype="float64")
    backend.assert_close(without, expected, dtype="float64")


@st.composite
def dense_cases(draw: st.DrawFn) -> dict[str, Any]:
    batch = draw(batch_shapes)
    classes = draw(st.integers(1, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    targets = rng.dirichlet(np.ones(classes), size=batch)
    if draw(st.booleans()):  # one-hot targets: exact zeros
        targets = np.eye(classes)[rng.integers(0, classes, size=batch)]
    weights = random_weights(rng, draw(broadcast_shape(batch))) if draw(st.booleans()) else None
    return {
        "logits": rng.normal(scale=3.0, size=(*batch, classes)),
        "targets": targets,
        "weights": weights,
        "label_smoothing": draw(st.sampled_from([0.0, 1.0]) | st.floats(0.0, 1.0)),
        "reduction": draw(st.sampled_from(REDUCTIONS)),
        "axis": draw(st.integers(0, len(batch))),
    }


@backend_property(case=dense_cases())
def test_dense_matches_reference(backend, case):
    axis = case["axis"]
    logits, targets = (np.moveaxis(case[k], -1, axis) for k in ("logits", "targets"))
    weights = {} if case["weights"] is None else {"weights": case["weights"]}
    options = {"axis": axis, "label_smoothing": case["label_smoothing"], "reduction": case["reduction"]}
    out = al.softmax_cross_entropy(
        backend.asarray(logits),
        backend.asarray(targets),
        **{k: backend.asarray(v) for k, v in weights.items()},
        **options,
    )
    backend.assert_close(out, ref.dense_ce(logits, targets, **weights, **options), dtype="float64")


@backend_property(
    shape=st.tuples(st.integers(0, 4), st.integers(0, 5), st.integers(1, 5)),
    flags=st.sampled_from(ref.tfa_flag_combinations(allowed=True)),
    weighted=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_sequence_loss_matches_reference(backend, shape, flags, weighted, seed):
    """TensorFlow Addons' flag combinations on random ``[B, T, C]`` shapes, empty ones included."""
    batch, time, classes = shape
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=shape)
    labels = rng.integers(0, classes, size=(batch, time))
    weights = random_weights(rng, (batch, time)) if weighted else None
    args = [backend.asarray(logits), backend.asarray(labels)]
    if weights is not None:
        args.append(backend.asarray(weights))
    out = al.sequence_loss(*args, **flags)
    backend.assert_close(out, ref.tfa_sequence_loss(logits, labels, weights, **flags), dtype="float64")


@backend_property(shape=batch_shapes, keepdims=st.booleans(), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_logsumexp_matches_reference(backend, shape, keepdims, seed, data):
    """Any axis of a random shape; the other axes may be empty, the reduced one is not."""
    axis = data.draw(st.integers(-len(shape), len(shape) - 1), label="axis")
    shape = tuple(max(n, 1) if i == axis % len(shape) else n for i, n in enumerate(shape))
    x = np.random.default_rng(seed).normal(scale=5.0, size=shape)
    expected = ref.logsumexp(x, axis=axis)
    if keepdims:
        expected = np.expand_dims(expected, axis)
    out = al.logsumexp(backend.asarray(x), axis=axis, keepdims=keepdims)
    backend.assert_close(out, expected, dtype="float64")


@backend_property(
    shape=st.tuples(st.integers(0, 3), st.integers(0, 4), st.integers(1, 3), st.integers(0, 3)),
    reduction=st.sampled_from(REDUCTIONS),
    zero_infinity=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_ctc_matches_brute_force(backend, shape, reduction, zero_infinity, seed):
    """``ctc_loss`` on random ``[B, T, C]`` logits and ``[B, S]`` labels, the blank anywhere, lengths
    of 0, repeats, infeasible sequences, NaN and inf in the frames past the logit lengths and any
    integer past the label lengths: the sum over all paths; ``value_and_grad``'s gradient is 0 past
    the logit lengths and on sequences that ``zero_infinity`` zeroes, sums to 0 over the classes of
    every other frame of a feasible sequence, and is NaN on an infeasible one's frames."""
    batch, time, classes, width = shape
    rng = np.random.default_rng(seed)
    blank = int(rng.integers(0, classes))
    logits = rng.normal(scale=2.0, size=shape[:3])
    logit_lengths = rng.integers(0, time + 1, size=batch)
    label_lengths = rng.integers(0, width + 1, size=batch) if classes > 1 else np.zeros(batch, dtype=int)
    labels = rng.integers(-2, classes + 2, size=(batch, width))  # garbage past the label lengths
    used = np.arange(width)[None, :] < label_lengths[:, None]
    labels[used] = (blank + rng.integers(1, max(classes, 2), size=int(used.sum()))) % classes  # not blank
    past = np.arange(time)[None, :] >= logit_lengths[:, None]
    logits[past] = rng.choice([np.nan, np.inf, -np.inf], size=(int(past.sum()), classes))
    options = {"blank": blank, "reduction": reduction, "zero_infinity": zero_infinity}
    index = label_dtype(backend)
    arrays = (backend.asarray(logits), backend.asarray(labels, index))
    lengths = {"logit_lengths": backend.asarray(logit_lengths, index)}
    lengths["label_lengths"] = backend.asarray(label_lengths, index)
    expected = ref.ctc(logits, labels, logit_lengths, label_lengths, **options)
    backend.assert_close(al.ctc_loss(*arrays, **lengths, **options), expected, dtype="float64")
    value, grad = al.value_and_grad(al.ctc_loss)(*arrays, **lengths, **options)
    backend.assert_close(value, expected, dtype="float64")
    got = backend.check_result(grad, dtype="float64", shape=logits.shape)
    losses = ref.ctc(logits, labels, logit_lengths, label_lengths, blank=blank)
    assert (got[past] == 0).all()
    for b in range(batch):
        frames = got[b, : logit_lengths[b]]
        if np.isfinite(losses[b]):
            np.testing.assert_allclose(frames.sum(axis=-1), 0.0, atol=1e-12)
        elif zero_infinity:
            assert (frames == 0).all()
        else:
            assert np.isnan(frames).all()
