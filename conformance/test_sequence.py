"""Sequence losses against the float64 reference: TensorFlow Addons' ``sequence_loss``
(every allowed flag combination, its output shape and value), TensorFlow's legacy
``sequence_loss_by_example`` (list and stacked forms) and :mod:`arrayloss.compat.tf`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import reference as ref

import arrayloss as al
from arrayloss.compat import tf

FLAGS = ("average_across_timesteps", "average_across_batch", "sum_over_timesteps", "sum_over_batch")
FORBIDDEN = ref.TFA_FORBIDDEN
ALLOWED = ref.tfa_flag_combinations(allowed=True)


def combo_id(flags: dict[str, bool]) -> str:
    return "+".join(name for name, on in flags.items() if on) or "no_reduction"


def expected_shape(flags: dict[str, bool], batch: int, time: int) -> tuple[int, ...]:
    over_time = flags["average_across_timesteps"] or flags["sum_over_timesteps"]
    over_batch = flags["average_across_batch"] or flags["sum_over_batch"]
    return (() if over_batch else (batch,)) + (() if over_time else (time,))


def sequence_inputs(seed: int, batch: int = 4, time: int = 5, classes: int = 6) -> dict[str, np.ndarray]:
    """Batch-major logits ``[B, T, C]``, labels ``[B, T]`` and weights ``[B, T]`` with zeros.

    The last sequence and the first step have weight 0 throughout (a padded row and
    column), so every division by zero of the reductions is exercised.
    """
    rng = np.random.default_rng(seed)
    weights = rng.uniform(0.0, 2.0, size=(batch, time))
    weights[rng.random((batch, time)) < 0.25] = 0.0
    if batch and time:
        weights[-1, :] = 0.0
        weights[:, 0] = 0.0
    return {
        "logits": rng.normal(scale=2.0, size=(batch, time, classes)),
        "labels": rng.integers(0, classes, size=(batch, time)),
        "weights": weights,
    }


def skip_unless_dtype(backend, dtype: str) -> None:
    if dtype not in backend.float_dtypes:
        pytest.skip(f"{backend.name} has no {dtype} on {backend.device}")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("flags", ALLOWED, ids=combo_id)
def test_sequence_loss_flags(backend, flags, dtype):
    """Shape and value of every allowed combination (TensorFlow Addons rejects the other 9 of 16)."""
    skip_unless_dtype(backend, dtype)
    assert len(ALLOWED) == 7
    inputs = sequence_inputs(1)
    logits = backend.asarray(inputs["logits"], dtype)
    weights = backend.asarray(inputs["weights"], dtype)
    out = al.sequence_loss(logits, backend.asarray(inputs["labels"], "int32"), weights, **flags)
    expected = ref.tfa_sequence_loss(
        backend.to_numpy(logits), inputs["labels"], backend.to_numpy(weights), **flags
    )
    assert expected.shape == expected_shape(flags, 4, 5)
    backend.assert_close(out, expected, dtype=dtype)


def test_sequence_loss_default_is_weighted_mean(backend):
    """Default flags: the weighted mean over all steps, a scalar."""
    inputs = sequence_inputs(2)
    out = al.sequence_loss(*(backend.asarray(inputs[k]) for k in ("logits", "labels", "weights")))
    steps = ref.sparse_ce(inputs["logits"], inputs["labels"])
    backend.assert_close(out, (steps * inputs["weights"]).sum() / inputs["weights"].sum(), dtype="float64")


@pytest.mark.parametrize("flags", ALLOWED, ids=combo_id)
def test_sequence_loss_dense_targets(backend, flags):
    """Probability targets ``[B, T, C]`` in place of labels."""
    rng = np.random.default_rng(3)
    inputs = sequence_inputs(3)
    targets = rng.dirichlet(np.ones(6), size=(4, 5))
    out = al.sequence_loss(
        backend.asarray(inputs["logits"]),
        backend.asarray(targets),
        backend.asarray(inputs["weights"]),
        **flags,
    )
    expected = ref.tfa_sequence_loss(inputs["logits"], targets, inputs["weights"], **flags)
    backend.assert_close(out, expected, dtype="float64")


@pytest.mark.parametrize("flags", ALLOWED, ids=combo_id)
def test_sequence_loss_without_weights(backend, flags):
    """``weights=None`` is all ones."""
    inputs = sequence_inputs(4)
    out = al.sequence_loss(backend.asarray(inputs["logits"]), backend.asarray(inputs["labels"]), **flags)
    expected = ref.tfa_sequence_loss(inputs["logits"], inputs["labels"], np.ones((4, 5)), **flags)
    backend.assert_close(out, expected, dtype="float64")


@pytest.mark.parametrize("shape", [(0, 3), (2, 0)], ids=["no_sequences", "no_steps"])
@pytest.mark.parametrize("flags", ALLOWED, ids=combo_id)
def test_sequence_loss_empty(backend, flags, shape):
    """No sequences or no steps: reduced axes give 0 (division by zero is 0), kept axes stay empty."""
    inputs = sequence_inputs(5, *shape)
    out = al.sequence_loss(*(backend.asarray(inputs[k]) for k in ("logits", "labels", "weights")), **flags)
    expected = ref.tfa_sequence_loss(inputs["logits"], inputs["labels"], inputs["weights"], **flags)
    assert expected.shape == expected_shape(flags, *shape)
    backend.assert_close(out, expected, dtype="float64")


@pytest.mark.parametrize("flags", ref.tfa_flag_combinations(allowed=False), ids=combo_id)
def test_sequence_loss_forbidden_flags(backend, flags):
    """The combinations TensorFlow Addons rejects raise ValueError naming a conflicting pair."""
    inputs = sequence_inputs(6)
    args = [backend.asarray(inputs[k]) for k in ("logits", "labels", "weights")]
    conflicts = [(a, b) for a, b in FORBIDDEN if flags[a] and flags[b]]
    with pytest.raises(ValueError) as error:
        al.sequence_loss(*args, **flags)
    message = str(error.value)
    assert any(a in message and b in message for a, b in conflicts), message
    # The same arrays are fine once the flags are not in conflict.
    backend.check_result(al.sequence_loss(*args), dtype="float64", shape=())


def test_sequence_loss_forbidden_pairs_named(backend):
    """Each forbidden pair alone (other flags False) is named in the error."""
    inputs = sequence_inputs(7)
    args = [backend.asarray(inputs[k]) for k in ("logits", "labels", "weights")]
    for first, second in FORBIDDEN:
        flags = dict.fromkeys(FLAGS, False) | {first: True, second: True}
        with pytest.raises(ValueError, match=f"(?=.*{first})(?=.*{second})"):
            al.sequence_loss(*args, **flags)
    backend.check_result(al.sequence_loss(*args), dtype="float64", shape=())


def squared_logits_loss(backend, calls: list[dict[str, Any]]):
    """A loss that is not the cross entropy, written with the backend's namespace:
    ``0.5 * sum(logits ** 2) + label`` per row. Records the keyword arguments it receives."""
    xp = backend.xp

    def loss(*, labels: Any, logits: Any) -> Any:
        calls.append({"labels": labels, "logits": logits})
        return 0.5 * xp.sum(logits * logits, axis=-1) + xp.astype(labels, logits.dtype)

    return loss


def squared_logits_reference(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return 0.5 * (logits**2).sum(axis=-1) + labels


@pytest.mark.parametrize("flags", ALLOWED, ids=combo_id)
def test_sequence_loss_softmax_loss_function(backend, flags):
    """A custom ``softmax_loss_function`` replaces the cross entropy; it is called once, with
    keywords, on the ``[B * T]`` labels and ``[B * T, C]`` logits."""
    inputs = sequence_inputs(8)
    calls: list[dict[str, Any]] = []
    out = al.sequence_loss(
        *(backend.asarray(inputs[k]) for k in ("logits", "labels", "weights")),
        softmax_loss_function=squared_logits_loss(backend, calls),
        **flags,
    )
    assert len(calls) == 1
    backend.check_result(calls[0]["logits"], dtype="float64", shape=(20, 6))
    assert tuple(calls[0]["labels"].shape) == (20,)
    steps = squared_logits_reference(inputs["logits"], inputs["labels"])
    expected = ref.tfa_reduce(steps, inputs["weights"], **flags)
    backend.assert_close(out, expected, dtype="float64")


def time_major_lists(backend, inputs: dict[str, np.ndarray], dtype: str) -> tuple[list, list, list]:
    """TensorFlow's legacy form: one ``[batch, ...]`` array per step."""
    time = inputs["labels"].shape[1]
    return (
        [backend.asarray(inputs["logits"][:, t], dtype) for t in range(time)],
        [backend.asarray(inputs["labels"][:, t], "int32") for t in range(time)],
        [backend.asarray(inputs["weights"][:, t], dtype) for t in range(time)],
    )


def stacked(backend, inputs: dict[str, np.ndarray], dtype: str) -> tuple[Any, Any, Any]:
    return (
        backend.asarray(inputs["logits"], dtype),
        backend.asarray(inputs["labels"], "int32"),
        backend.asarray(inputs["weights"], dtype),
    )


FORMS = {"list": time_major_lists, "stacked": stacked}


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("average", [True, False], ids=["average", "sum"])
@pytest.mark.parametrize("form", sorted(FORMS))
def test_sequence_loss_by_example(backend, form, average, dtype):
    skip_unless_dtype(backend, dtype)
    inputs = sequence_inputs(9)
    args = FORMS[form](backend, inputs, dtype)
    out = al.sequence_loss_by_example(*args, average_across_timesteps=average)
    logits, _, weights = (backend.to_numpy(a) for a in stacked(backend, inputs, dtype))  # rounded to dtype
    expected = ref.legacy_sequence_loss_by_example(
        logits, inputs["labels"], weights, average_across_timesteps=average
    )
    backend.assert_close(out, expected, dtype=dtype)


@pytest.mark.parametrize("form", sorted(FORMS))
def test_sequence_loss_by_example_softmax_loss_function(backend, form):
    inputs = sequence_inputs(10)
    calls: list[dict[str, Any]] = []
    out = al.sequence_loss_by_example(
        *FORMS[form](backend, inputs, "float64"), softmax_loss_function=squared_logits_loss(backend, calls)
    )
    assert len(calls) == 1
    steps = squared_logits_reference(inputs["logits"], inputs["labels"])
    w = inputs["weights"]
    backend.assert_close(out, (steps * w).sum(axis=1) / (w.sum(axis=1) + 1e-12), dtype="float64")


# --- arrayloss.compat.tf ------------------------------------------------------------------------------


def test_tf_sparse_softmax_cross_entropy_with_logits(backend):
    inputs = sequence_inputs(11)
    logits, labels = inputs["logits"][:, 0], inputs["labels"][:, 0]
    out = tf.sparse_softmax_cross_entropy_with_logits(
        labels=backend.asarray(labels), logits=backend.asarray(logits)
    )
    backend.assert_close(out, ref.sparse_ce(logits, labels), dtype="float64")


@pytest.mark.parametrize("average", [True, False], ids=["average", "sum"])
def test_tf_sequence_loss_by_example(backend, average):
    """Positional arguments as in TensorFlow: (logits, targets, weights, average_across_timesteps)."""
    inputs = sequence_inputs(12)
    out = tf.sequence_loss_by_example(*time_major_lists(backend, inputs, "float64"), average)
    expected = ref.legacy_sequence_loss_by_example(
        inputs["logits"], inputs["labels"], inputs["weights"], average_across_timesteps=average
    )
    backend.assert_close(out, expected, dtype="float64")


@pytest.mark.parametrize("average_across_batch", [True, False], ids=["batch_mean", "batch_sum"])
@pytest.mark.parametrize("average_across_timesteps", [True, False], ids=["time_mean", "time_sum"])
def test_tf_legacy_sequence_loss(backend, average_across_timesteps, average_across_batch):
    """TensorFlow's legacy ``sequence_loss``: the per-sequence losses summed, divided by the batch size."""
    inputs = sequence_inputs(13)
    out = tf.sequence_loss(
        *time_major_lists(backend, inputs, "float64"), average_across_timesteps, average_across_batch
    )
    per_sequence = ref.legacy_sequence_loss_by_example(
        inputs["logits"],
        inputs["labels"],
        inputs["weights"],
        average_across_timesteps=average_across_timesteps,
    )
    expected = per_sequence.sum() / (len(per_sequence) if average_across_batch else 1)
    backend.assert_close(out, expected, dtype="float64")
