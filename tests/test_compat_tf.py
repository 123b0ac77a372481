"""``arrayloss.compat.tf`` against the seed's TensorFlow output (../shared/seeds)."""

import numpy as np
import pytest

from arrayloss.compat import tf, tfa

LOGITS = [
    np.array([[1.5, 1.5, 1.5], [0.7, 0.9, 0.2]]),
    np.array([[0.5, 0.2, 1.7], [0.1, 1.2, 0.5]]),
    np.array([[0.7, 0.3, 1.2], [1.1, 0.2, 0.5]]),
    np.array([[0.2, 0.4, 0.1], [0.8, 0.8, 0.5]]),
]
LABELS = [np.array(v, dtype=np.int32) for v in ([0, 1], [2, 0], [0, 0], [2, 1])]
WEIGHTS = [np.array([1.0, 1.0])] * 4
# Printed by TensorFlow 0.7 in the seed notebook.
STEP_LOSSES = [
    [1.09861229, 0.8395462],
    [0.42155128, 1.70401887],
    [1.19967598, 0.67058521],
    [1.23983106, 1.0082565],
]
BY_EXAMPLE = [0.98991765, 1.05560169]


def test_sparse_softmax_cross_entropy_with_logits_per_step():
    for logits, labels, expected in zip(LOGITS, LABELS, STEP_LOSSES, strict=True):
        out = tf.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        np.testing.assert_allclose(out, expected, atol=1e-8)


def test_sparse_softmax_cross_entropy_with_logits_is_keyword_only():
    with pytest.raises(TypeError):
        tf.sparse_softmax_cross_entropy_with_logits(LABELS[0], LOGITS[0])


def test_out_of_range_label_raises_like_tensorflow_on_cpu():
    with pytest.raises(ValueError, match=r"labels contains 3, outside the valid range \[0, 3\)"):
        tf.sparse_softmax_cross_entropy_with_logits(labels=np.array([0, 3]), logits=LOGITS[0])


def test_sequence_loss_by_example_seed():
    np.testing.assert_allclose(tf.sequence_loss_by_example(LOGITS, LABELS, WEIGHTS), BY_EXAMPLE, atol=1e-8)


def test_sequence_loss_by_example_without_averaging_sums_steps():
    out = tf.sequence_loss_by_example(LOGITS, LABELS, WEIGHTS, average_across_timesteps=False)
    np.testing.assert_allclose(out, np.sum(STEP_LOSSES, axis=0), atol=4e-8)


def test_legacy_sequence_loss_divides_summed_examples_by_batch_size():
    np.testing.assert_allclose(tf.sequence_loss(LOGITS, LABELS, WEIGHTS), sum(BY_EXAMPLE) / 2, atol=1e-8)
    unaveraged = tf.sequence_loss(LOGITS, LABELS, WEIGHTS, average_across_batch=False)
    np.testing.assert_allclose(unaveraged, sum(BY_EXAMPLE), atol=2e-8)


def test_sequence_loss_by_example_weights_and_custom_loss():
    weights = [np.array([1.0, 0.0]), *WEIGHTS[1:]]
    out = tf.sequence_loss_by_example(LOGITS, LABELS, weights)
    expected_second = (STEP_LOSSES[1][1] + STEP_LOSSES[2][1] + STEP_LOSSES[3][1]) / (3 + 1e-12)
    np.testing.assert_allclose(out, [BY_EXAMPLE[0], expected_second], atol=1e-8)

    def constant(*, labels, logits):
        return np.full(labels.shape, 2.0)

    out = tf.sequence_loss_by_example(LOGITS, LABELS, WEIGHTS, softmax_loss_function=constant)
    np.testing.assert_allclose(out, [2.0, 2.0], rtol=1e-12)


def test_tfa_sequence_loss_takes_tfa_positional_flags_and_name():
    """``compat.tfa.sequence_loss`` with both averages off gives TensorFlow's per-step losses; by default
    their mean (every weight is 1); the legacy ``compat.tf.sequence_loss`` averages per sequence first."""
    logits, labels, weights = (np.stack(steps, axis=1) for steps in (LOGITS, LABELS, WEIGHTS))
    per_step = tfa.sequence_loss(logits, labels, weights, False, False, name="loss")
    np.testing.assert_allclose(per_step, np.transpose(STEP_LOSSES), atol=1e-8)
    np.testing.assert_allclose(tfa.sequence_loss(logits, labels, weights), np.mean(STEP_LOSSES), atol=1e-8)
    with pytest.raises(ValueError, match="average_across_timesteps and sum_over_timesteps"):
        tfa.sequence_loss(logits, labels, weights, True, False, True)


def test_tensorflow_name_argument_is_accepted():
    """TensorFlow's ``name=`` (a name scope) in its positional place: ported calls run unchanged."""
    out = tf.sparse_softmax_cross_entropy_with_logits(labels=LABELS[0], logits=LOGITS[0], name="xent")
    np.testing.assert_allclose(out, STEP_LOSSES[0], atol=1e-8)
    by_example = tf.sequence_loss_by_example(LOGITS, LABELS, WEIGHTS, True, None, "loss")
    np.testing.assert_allclose(by_example, BY_EXAMPLE, atol=1e-8)
    np.testing.assert_allclose(
        tf.sequence_loss(LOGITS, LABELS, WEIGHTS, True, True, None, "loss"), sum(BY_EXAMPLE) / 2, atol=1e-8
    )
