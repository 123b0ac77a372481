"""Argument handling of the public functions on NumPy (the conformance suite covers every backend)."""

import numpy as np
import pytest

import arrayloss as al


def test_options_are_keyword_only():
    logits, labels = np.zeros((2, 3)), np.zeros(2, dtype=np.int64)
    with pytest.raises(TypeError):
        al.sparse_softmax_cross_entropy(logits, labels, -1)


def test_unknown_option_is_a_type_error():
    with pytest.raises(TypeError, match="reductio"):
        al.sparse_softmax_cross_entropy(np.zeros((2, 3)), np.zeros(2, dtype=np.int64), reductio="mean")


def test_explicit_namespace_is_used():
    import array_api_compat.numpy as xp

    out = al.sparse_softmax_cross_entropy(np.zeros((2, 4)), np.zeros(2, dtype=np.int64), xp=xp)
    np.testing.assert_allclose(out, [np.log(4.0)] * 2, rtol=1e-15)


def test_list_where_array_required_names_argument_and_hints():
    with pytest.raises(TypeError, match=r"labels must be an array.*asarray"):
        al.sparse_softmax_cross_entropy(np.zeros((2, 3)), [0, 1])


def test_python_scalar_weights_rejected_with_hint():
    with pytest.raises(TypeError, match="weights must be an array"):
        al.sparse_softmax_cross_entropy(np.zeros((2, 3)), np.zeros(2, dtype=np.int64), weights=2.0)


def test_sequence_list_form_needs_sequences_everywhere():
    steps = [np.zeros((2, 3))]
    with pytest.raises(TypeError, match="targets must be one too"):
        al.sequence_loss_by_example(steps, np.zeros((2, 1), dtype=np.int64), [np.ones(2)])


def test_sequence_steps_of_different_shapes():
    logits = [np.zeros((2, 3)), np.zeros((3, 3))]
    labels = [np.zeros(2, dtype=np.int64), np.zeros(3, dtype=np.int64)]
    weights = [np.ones(2), np.ones(3)]
    with pytest.raises(ValueError, match="every step of logits must have the same shape"):
        al.sequence_loss_by_example(logits, labels, weights)


def test_sequence_empty_lists():
    with pytest.raises(ValueError, match="at least one step"):
        al.sequence_loss_by_example([], [], [])


class EagerTensor:
    """Stands for an array of a library array-api-compat does not know (here, by its module: TensorFlow)."""

    __module__ = "tensorflow.python.framework.ops"
    shape = (2, 3)
    dtype = "float32"


def test_an_array_of_an_unsupported_library_is_named():
    expected = r"logits is a tensorflow\.python\.framework\.ops\.EagerTensor"
    with pytest.raises(TypeError, match=expected) as raised:
        al.sparse_softmax_cross_entropy(EagerTensor(), np.zeros(2, dtype=np.int64))
    message = str(raised.value)
    assert "an array of tensorflow" in message and "numpy.asarray(logits)" in message


def test_numpy_scalars_are_accepted_as_numeric_options():
    """NumPy's integer and float scalars (what ``np.int64(...)`` or a computed schedule gives) are taken
    as the Python numbers they hold, for chunk sizes, indices and fractions alike."""
    logits, labels = np.asarray([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]]), np.asarray([0, 2])
    options = {"label_smoothing": 0.1, "z_loss": 0.01, "ignore_index": -1, "softcap": 5.0}
    expected = al.sparse_softmax_cross_entropy(logits, labels, chunk_size=1, **options)
    numpy_scalars = {
        "label_smoothing": np.float32(0.1),
        "z_loss": np.float64(0.01),
        "ignore_index": np.int64(-1),
        "softcap": np.float64(5.0),
    }
    got = al.sparse_softmax_cross_entropy(logits, labels, chunk_size=np.int64(1), **numpy_scalars)
    np.testing.assert_allclose(got, expected, rtol=1e-7)
