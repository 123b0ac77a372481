"""Static types of the public API: mypy accepts correct calls and rejects a misspelt option, also through
``value_and_grad``, which keeps the loss's signature; a loss of NumPy arrays types as a NumPy array."""

import pytest

mypy_api = pytest.importorskip("mypy.api", reason="the tests session installs mypy")

CORRECT = """
import numpy as np
import arrayloss as al

logits, labels = np.zeros((2, 3)), np.zeros(2, dtype=np.int64)
al.sparse_softmax_cross_entropy(logits, labels, reduction="mean")
al.linear_cross_entropy(np.zeros((2, 4)), np.zeros((3, 4)), labels, reduction="sum")
value, grad = al.value_and_grad(al.sparse_softmax_cross_entropy)(logits, labels, reduction="sum")
result: np.ndarray = al.sigmoid_binary_cross_entropy(logits, logits)
lse: np.ndarray = al.logsumexp(logits)
"""
MISSPELT = {  # snippet name: (the line added to CORRECT, what mypy's message names)
    "sparse_reduction": ('al.sparse_softmax_cross_entropy(logits, labels, reduction="meen")', '"reduction"'),
    "dense_reduction": ('al.softmax_cross_entropy(logits, logits, reduction="avg")', '"reduction"'),
    "result_type": ("wrong: str = al.sparse_softmax_cross_entropy(logits, labels)", '"ndarray'),
    "divergence_type": ("wrong_kl: int = al.kl_divergence(logits, logits)", '"ndarray'),
    "value_and_grad_keyword": (
        'al.value_and_grad(al.sparse_softmax_cross_entropy)(logits, labels, reductio="sum")',
        '"reductio"',
    ),
}


@pytest.fixture(scope="module")
def mypy_output(tmp_path_factory) -> str:
    """One mypy run over every snippet (a file each): its report."""
    folder = tmp_path_factory.mktemp("typing")
    (folder / "correct.py").write_text(CORRECT)
    for name, (line, _) in MISSPELT.items():
        (folder / f"{name}.py").write_text(CORRECT + line + "\n")
    stdout, stderr, status = mypy_api.run(["--strict", "--cache-dir", str(folder / ".cache"), str(folder)])
    assert status in (0, 1), stderr
    return stdout


def test_correct_calls_type_check(mypy_output):
    assert "correct.py" not in mypy_output, mypy_output


@pytest.mark.parametrize("name", sorted(MISSPELT))
def test_a_misspelt_option_is_a_type_error(mypy_output, name):
    errors = [line for line in mypy_output.splitlines() if f"{name}.py:" in line]
    assert len(errors) == 1 and MISSPELT[name][1] in errors[0], mypy_output
