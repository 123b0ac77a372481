"""Package-level properties: imports, public signatures, typing marker."""

import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import arrayloss as al

HEAVY = ("torch", "cupy", "jax", "dask", "tensorflow", "array_api_strict", "scipy")
LOSSES = [
    al.sparse_softmax_cross_entropy,
    al.softmax_cross_entropy,
    al.sequence_loss,
    al.sequence_loss_by_example,
    al.logsumexp,
    al.log_softmax,
    al.sigmoid_binary_cross_entropy,
    al.sigmoid_focal_loss,
    al.kl_divergence,
    al.ctc_loss,
]


def test_import_pulls_in_no_array_library():
    code = "import sys, arrayloss, arrayloss.compat.tf; print(' '.join(sorted(sys.modules)))"
    loaded = set(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.split()
    )
    assert not {m for m in loaded if m.split(".")[0] in HEAVY}


@pytest.mark.parametrize(
    ("module", "function"),
    [
        ("tf", "sequence_loss_by_example"),
        ("tfa", "sequence_loss"),
        ("torch", "cross_entropy"),
        ("optax", "softmax_cross_entropy_with_integer_labels"),
    ],
)
def test_compat_modules_by_attribute_access_import_no_array_library(module, function):
    """``arrayloss.compat.tf`` (or ``.torch``, ...) after a plain ``import arrayloss``, as users write it."""
    code = (
        f"import sys, arrayloss; f = arrayloss.compat.{module}.{function}; "
        "print(f.__module__); print(' '.join(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded_from, loaded = out.splitlines()
    assert loaded_from == f"arrayloss.compat.{module}"
    assert not {m for m in loaded.split() if m.split(".")[0] in HEAVY}
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        al.compat.missing  # noqa: B018


def test_first_calls_from_many_threads_at_once():
    """The torch module of arrayloss is imported at the first call on tensors; threads that call
    while it is being imported wait for it (no partially initialized module)."""
    code = """
import threading, torch, arrayloss as al
x, y = torch.zeros(4, 5), torch.zeros(4, dtype=torch.int64)
start, errors = threading.Barrier(16), []
def first_call():
    start.wait()
    try:
        al.sparse_softmax_cross_entropy(x, y)
    except Exception as e:
        errors.append(repr(e))
threads = [threading.Thread(target=first_call) for _ in range(16)]
for t in threads: t.start()
for t in threads: t.join()
print(errors)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


DISTRIBUTED = [
    al.distributed.vocab_parallel_cross_entropy,
    al.distributed.vocab_parallel_linear_cross_entropy,
]


def test_distributed_by_attribute_access_imports_no_array_library():
    code = (
        "import sys, arrayloss; f = arrayloss.distributed.vocab_parallel_cross_entropy; "
        "arrayloss.distributed.torch_collectives; arrayloss.distributed.jax_collectives; "
        "print(f.__module__); print(' '.join(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded_from, loaded = out.splitlines()
    assert loaded_from == "arrayloss._vocab_parallel"
    assert not {m for m in loaded.split() if m.split(".")[0] in HEAVY}


def test_distributed_declares_its_public_names():
    """``__all__`` lists exactly the public functions and classes that ``arrayloss.distributed`` offers."""
    module = al.distributed
    public = {
        name
        for name, value in vars(module).items()
        if (inspect.isfunction(value) or inspect.isclass(value))
        and not name.startswith("_")
        and value.__module__.startswith("arrayloss")
    }
    assert set(module.__all__) == public


@pytest.mark.parametrize("function", LOSSES + DISTRIBUTED, ids=lambda f: f.__name__)
def test_signature_arrays_positional_options_keyword_xp_last(function):
    params = list(inspect.signature(function).parameters.values())
    kinds = [p.kind for p in params]
    assert kinds.count(inspect.Parameter.POSITIONAL_ONLY) >= 1
    assert all(
        k is inspect.Parameter.POSITIONAL_ONLY
        for k in kinds[: kinds.count(inspect.Parameter.POSITIONAL_ONLY)]
    )
    assert all(
        k is inspect.Parameter.KEYWORD_ONLY for k in kinds[kinds.count(inspect.Parameter.POSITIONAL_ONLY) :]
    )
    assert params[-1].name == "xp" and params[-1].default is None


@pytest.mark.parametrize("function", LOSSES + DISTRIBUTED, ids=lambda f: f.__name__)
def test_public_functions_have_runnable_examples(function):
    assert ">>> " in (function.__doc__ or "")


def test_py_typed_marker_ships():
    assert (Path(al.__file__).parent / "py.typed").is_file()


def test_public_names():
    assert set(al.__all__) >= {f.__name__ for f in LOSSES}
    assert all(callable(getattr(al, name)) for name in al.__all__ if name not in ("compat", "distributed"))


def test_dir_lists_the_public_names_only():
    """``dir()`` (and so tab completion) shows the lazily imported submodules before their first
    access, and none of the package's own imports."""
    code = "import arrayloss; print(' '.join(dir(arrayloss))); print(' '.join(dir(arrayloss.compat)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    top, compat = (line.split() for line in out.splitlines())
    assert top == sorted([*al.__all__, "__version__"])
    assert compat == ["optax", "tf", "tfa", "torch"]


@pytest.mark.parametrize("module", ["tf", "tfa", "torch", "optax"])
def test_compat_modules_declare_their_public_names(module):
    """``__all__`` lists exactly the module's public functions (``from arrayloss.compat.tf import *``)."""
    compat = importlib.import_module(f"arrayloss.compat.{module}")
    public = {
        name
        for name, value in vars(compat).items()
        if inspect.isfunction(value) and not name.startswith("_") and value.__module__ == compat.__name__
    }
    assert set(compat.__all__) == public
