"""Bad inputs: every case of ``bad_inputs.py`` on every backend, and the lazy-array fallbacks.

On eager host arrays, labels out of range and negative or NaN weights raise. Elsewhere
(JAX, Dask, GPU) the documented fallback holds: that example's loss is NaN and the
others are right; weights are used as given.
"""

import re

import numpy as np
import pytest
import reference
from bad_inputs import CASES, LABELS, LOGITS, SEQ_LOGITS, SEQ_TARGETS

import arrayloss as al

# The inputs as the backends see them (float32 exists on every device).
LOGITS32 = LOGITS.astype(np.float32)
SEQ_LOGITS32 = SEQ_LOGITS.astype(np.float32)


def skip_unless_checked(backend, case):
    """Skip a case that does not apply to this backend, or whose values it does not check."""
    reason = case.applies(backend)
    if reason is not None:
        pytest.skip(reason)
    if case.eager_only and not backend.eager:
        pytest.skip(f"{backend.name} values are not checked; the fallback tests below cover it")


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_raises_naming_the_argument(backend, case):
    skip_unless_checked(backend, case)
    args, kwargs = case.build(backend)
    with pytest.raises(case.error, match=re.escape(case.message)) as raised:
        case.function(*args, **kwargs)
    assert re.search(rf"(?<![\w\[]){re.escape(case.argument)}(?![\w\[])", str(raised.value)), (
        f"the message does not name {case.argument!r}: {raised.value}"
    )


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_raises_through_value_and_grad(backend, case):
    """The same error from ``value_and_grad``, whose one-pass gradient replaces the loss's forward pass."""
    if al._autodiff.rule_of(case.function) is None:
        pytest.skip(f"{case.function.__name__} has no analytic gradient")
    skip_unless_checked(backend, case)
    args, kwargs = case.build(backend)
    with pytest.raises(case.error, match=re.escape(case.message)):
        al.value_and_grad(case.function)(*args, **kwargs)


def test_case_ids_are_unique():
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))


def raised_if_eager(backend, match, function, *arrays, **options):
    """Call ``function`` on float32 / int32 copies of the NumPy ``arrays`` (options too, when arrays).

    On eager backends assert it raises ``ValueError`` matching ``match`` and return None;
    elsewhere return its result.
    """

    def convert(a):
        if not isinstance(a, np.ndarray):
            return a
        return backend.asarray(a, "int32" if a.dtype.kind in "iu" else "float32")

    args = [convert(a) for a in arrays]
    kwargs = {name: convert(value) for name, value in options.items()}
    if not backend.eager:
        return function(*args, **kwargs)
    with pytest.raises(ValueError, match=match):
        function(*args, **kwargs)
    return None


# The logits as themselves, and as hidden @ weight.T with weight the identity.
LOGITS_OF = {
    "sparse": (al.sparse_softmax_cross_entropy, (LOGITS,)),
    "linear": (al.linear_cross_entropy, (LOGITS, np.eye(3))),
}


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("bad_label", [3, -1, 1000])
@pytest.mark.parametrize("form", list(LOGITS_OF))
def test_out_of_range_label(backend, reduction, bad_label, form):
    labels = LABELS.copy()
    labels[1] = bad_label
    function, arrays = LOGITS_OF[form]
    out = raised_if_eager(
        backend,
        rf"labels contains {bad_label}, outside the valid range \[0, 3\)",
        function,
        *arrays,
        labels,
        reduction=reduction,
    )
    if out is None:
        return
    expected = reference.sparse_ce(LOGITS32, np.where(labels == bad_label, 0, labels))
    expected[1] = np.nan
    if reduction != "none":
        expected = np.asarray(np.nan)
    backend.assert_close(out, expected, dtype="float32")


@pytest.mark.parametrize("form", list(LOGITS_OF))
def test_out_of_range_label_is_nan_even_with_weight_zero(backend, form):
    labels = LABELS.copy()
    labels[2] = 7
    weights = np.array([1.0, 1.0, 0.0, 1.0])
    function, arrays = LOGITS_OF[form]
    out = raised_if_eager(backend, "labels contains 7", function, *arrays, labels, weights=weights)
    if out is None:
        return
    expected = reference.sparse_ce(LOGITS32, LABELS, weights=weights)
    expected[2] = np.nan
    backend.assert_close(out, expected, dtype="float32")


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_ignored_labels_may_lie_outside_the_classes(backend, reduction):
    labels = LABELS.copy()
    labels[[0, 3]] = -100
    out = al.sparse_softmax_cross_entropy(
        backend.asarray(LOGITS, "float32"),
        backend.asarray(labels, "int32"),
        ignore_index=-100,
        reduction=reduction,
    )
    expected = reference.sparse_ce(LOGITS32, labels, ignore_index=-100, reduction=reduction)
    backend.assert_close(out, expected, dtype="float32")


@pytest.mark.parametrize("function", [al.sequence_loss, al.sequence_loss_by_example], ids=["tfa", "legacy"])
def test_out_of_range_target_in_sequences(backend, function):
    targets = SEQ_TARGETS.copy()
    targets[1, 2] = 5
    weights = np.array([[1.0, 1.0, 1.0], [1.0, 0.5, 1.0]])
    out = raised_if_eager(
        backend,
        r"targets contains 5, outside the valid range \[0, 5\)",
        function,
        SEQ_LOGITS,
        targets,
        weights,
    )
    if out is None:
        return
    if function is al.sequence_loss:  # both axes reduced by default: the NaN step makes the loss NaN
        expected = np.asarray(np.nan)
    else:
        expected = reference.legacy_sequence_loss_by_example(SEQ_LOGITS32, SEQ_TARGETS, weights)
        expected[1] = np.nan
    backend.assert_close(out, expected, dtype="float32")


def test_out_of_range_target_of_a_weight_zero_step(backend):
    targets = SEQ_TARGETS.copy()
    targets[0, 1] = 9
    weights = np.array([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    out = raised_if_eager(
        backend, "targets contains 9", al.sequence_loss_by_example, SEQ_LOGITS, targets, weights
    )
    if out is None:
        return
    expected = reference.legacy_sequence_loss_by_example(SEQ_LOGITS32, SEQ_TARGETS, weights)
    backend.assert_close(out, expected, dtype="float32")


@pytest.mark.parametrize("bad_weight", [-0.5, np.nan])
@pytest.mark.parametrize("argument", ["weights", "class_weights"])
def test_invalid_weights(backend, bad_weight, argument):
    weights = np.ones(4 if argument == "weights" else 3)
    weights[1] = bad_weight
    out = raised_if_eager(
        backend,
        f"{argument} must be non-negative and not NaN",
        al.sparse_softmax_cross_entropy,
        LOGITS,
        LABELS,
        **{argument: weights},
    )
    if out is None:
        return
    # Unchecked: used as given (example 1, or the examples of label 1, scaled by the bad weight).
    expected = reference.sparse_ce(LOGITS32, LABELS, **{argument: weights})
    backend.assert_close(out, expected, dtype="float32")


def test_invalid_sequence_weights(backend):
    weights = np.array([[1.0, -1.0, 1.0], [np.nan, 1.0, 1.0]])
    out = raised_if_eager(
        backend,
        "weights must be non-negative and not NaN",
        al.sequence_loss_by_example,
        SEQ_LOGITS,
        SEQ_TARGETS,
        weights,
    )
    if out is None:
        return
    expected = reference.legacy_sequence_loss_by_example(SEQ_LOGITS32, SEQ_TARGETS, weights)
    assert np.isnan(expected[1]) and np.isfinite(expected[0])
    backend.assert_close(out, expected, dtype="float32")
