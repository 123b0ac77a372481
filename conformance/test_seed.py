"""The seed's example (TensorFlow 0.7's ``sequence_loss_by_example``) on every backend.

Numbers printed by TensorFlow in ``../shared/seeds/000_d6b16c75068d17ef.txt``.
"""

import numpy as np
import pytest

import arrayloss as al

LOGITS = np.array(
    [
        [[1.5, 1.5, 1.5], [0.7, 0.9, 0.2]],
        [[0.5, 0.2, 1.7], [0.1, 1.2, 0.5]],
        [[0.7, 0.3, 1.2], [1.1, 0.2, 0.5]],
        [[0.2, 0.4, 0.1], [0.8, 0.8, 0.5]],
    ]
)  # [time, batch, classes]
LABELS = np.array([[0, 1], [2, 0], [0, 0], [2, 1]])  # [time, batch]
STEP_LOSSES = [
    [1.09861229, 0.8395462],
    [0.42155128, 1.70401887],
    [1.19967598, 0.67058521],
    [1.23983106, 1.0082565],
]
BY_EXAMPLE = [0.98991765, 1.05560169]
SEED_ATOL = {"float64": 1e-7, "float32": 1e-5}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_per_step_cross_entropy(backend, dtype):
    if dtype not in backend.float_dtypes:
        pytest.skip(f"{backend.name} has no {dtype} on {backend.device}")
    for logits, labels, expected in zip(LOGITS, LABELS, STEP_LOSSES, strict=True):
        out = al.sparse_softmax_cross_entropy(
            backend.asarray(logits, dtype), backend.asarray(labels, "int32")
        )
        got = backend.check_result(out, dtype=dtype, shape=(2,))
        np.testing.assert_allclose(got, expected, rtol=0, atol=SEED_ATOL[dtype])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("form", ["list", "stacked"])
def test_sequence_loss_by_example(backend, dtype, form):
    if dtype not in backend.float_dtypes:
        pytest.skip(f"{backend.name} has no {dtype} on {backend.device}")
    ones = np.ones(LABELS.shape)
    if form == "list":
        args = (
            [backend.asarray(x, dtype) for x in LOGITS],
            [backend.asarray(x, "int32") for x in LABELS],
            [backend.asarray(x, dtype) for x in ones],
        )
    else:  # batch-major [batch, time, ...]
        args = (
            backend.asarray(LOGITS.transpose(1, 0, 2), dtype),
            backend.asarray(LABELS.T, "int32"),
            backend.asarray(ones.T, dtype),
        )
    out = al.sequence_loss_by_example(*args)
    got = backend.check_result(out, dtype=dtype, shape=(2,))
    np.testing.assert_allclose(got, BY_EXAMPLE, rtol=0, atol=SEED_ATOL[dtype])
