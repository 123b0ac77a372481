"""Autodiff of the losses in PyTorch and JAX, and laziness on Dask.

PyTorch: ``backward()`` against ``torch.nn.functional.cross_entropy``, ``torch.func.grad``,
``torch.compile(fullgraph=True)``, on both paths: the analytic backward of
``arrayloss._autodiff`` (default) and the plain composition of array-API operations
(the setting ``analytic_backward=False``). JAX: ``jit``, ``grad``, ``vmap`` and optax. Gradients with
respect to weights and soft targets against finite differences of the reference.
Each test is marked with its backend and deselected on the others (conftest.py).
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import pytest
import reference as ref
from test_grad import (
    CASES,
    Case,
    finite_difference_grad,
    gradient_to_numpy,
    held,
    needs,
    no_compute,
    on_backend,
    reference_value,
)

import arrayloss as al

AUTODIFF_RTOL = 1e-6  # arrayloss's analytic gradient against an autodiff gradient, float64
# Warnings of torch itself while it compiles (its instantiation of autograd.Function classes, a
# deprecation in a module it imports), not of the code under test: arrayloss's own are errors.
DYNAMO_WARNINGS = [
    "ignore:<class 'torch.autograd.function.Function'> should not be instantiated:DeprecationWarning",
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning",
]


def only(backend, name: str) -> Any:
    if backend.name != name:
        pytest.skip(f"{name}-specific test")
    return backend.module


def compiling(backend) -> Any:
    """torch, with Dynamo's caches emptied: each test compiles its own program (the suite compiles the
    same losses in more configurations than Dynamo's recompile limit)."""
    torch = only(backend, "torch")
    torch._dynamo.reset()
    return torch


def compile_fullgraph(torch: Any, fn: Any, *, inductor: bool) -> Any:
    """``torch.compile(fn, fullgraph=True)`` with Inductor, the default backend, or with ``"aot_eager"``:
    Dynamo's capture of the whole graph and AOTAutograd's trace of its forward and backward, as
    Inductor receives them, run without Inductor's C++ compilation (1-3 s a case cold, most of the
    suite's time on torch). This module's tests take Inductor on the analytic path, the one users
    get, and ``"aot_eager"`` on the composition path; ``test_ctc.py`` takes Inductor for ``ctc_loss``
    and ``"aot_eager"`` for its adapters."""
    return torch.compile(fn, fullgraph=True, backend="inductor" if inductor else "aot_eager")


@pytest.fixture(params=["analytic", "composition"])
def path(request, configure) -> str:
    """Run a PyTorch test on the analytic backward and on the plain composition (never delegated)."""
    configure(analytic_backward=request.param == "analytic", delegate_to_torch=False)
    return request.param


def assert_path(out, path: str) -> None:
    name = type(out.grad_fn).__name__
    assert ("AnalyticBackward" in name) == (path == "analytic"), f"{path} path gave grad_fn {name}"


def random_problem(seed: int, batch: int = 9, classes: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=batch)
    labels[[2, 5] if batch > 5 else []] = -100
    return rng.normal(size=(batch, classes)) * 3, labels


TORCH_OPTIONS = {  # arrayloss options -> torch.nn.functional.cross_entropy options
    "plain": ({}, {}),
    "class_weights": ({"class_weights": [1.0, 0.0, 2.0, 0.5, 1.0, 3.0]}, {"weight": True}),
    "ignore_index": ({"ignore_index": -100}, {"ignore_index": -100}),
    "label_smoothing": ({"label_smoothing": 0.1}, {"label_smoothing": 0.1}),
    "weights_and_ignore": (
        {"class_weights": [1.0, 0.0, 2.0, 0.5, 1.0, 3.0], "ignore_index": -100},
        {"weight": True, "ignore_index": -100},
    ),
    "smoothing_and_ignore": (
        {"label_smoothing": 0.2, "ignore_index": -100},
        {"label_smoothing": 0.2, "ignore_index": -100},
    ),
}


def torch_problem(backend, option: str, dtype: str) -> tuple[Any, Any, dict[str, Any], dict[str, Any]]:
    torch = backend.module
    z, labels = random_problem(len(option))
    ours, theirs = TORCH_OPTIONS[option]
    if "ignore_index" not in ours:
        labels[[2, 5]] = [1, 4]
    ours = {k: backend.asarray(np.asarray(v), dtype) if isinstance(v, list) else v for k, v in ours.items()}
    if "weight" in theirs:
        theirs = {**theirs, "weight": ours["class_weights"]}
    logits = backend.asarray(z, dtype)
    return logits, torch.asarray(labels, device=backend.device), ours, theirs


@pytest.mark.backend("torch")
@pytest.mark.parametrize("blocks", ["default", "one_row"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("option", list(TORCH_OPTIONS))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_torch_backward_matches_cross_entropy(backend, path, option, reduction, dtype, blocks, configure):
    torch = only(backend, "torch")
    if blocks == "one_row":  # the gradient (fused in the forward pass, or recomputed) in blocks of one row
        configure(block_bytes=1)
    functional = importlib.import_module("torch.nn.functional")
    logits, labels, ours, theirs = torch_problem(backend, option, dtype)
    z1, z2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    out = al.sparse_softmax_cross_entropy(z1, labels, reduction=reduction, **ours)
    expected = functional.cross_entropy(z2, labels, reduction=reduction, **theirs)
    assert_path(out, path)
    torch.sum(out * torch.arange(1, out.numel() + 1, dtype=out.dtype).reshape(out.shape)).backward()
    torch.sum(expected * torch.arange(1, out.numel() + 1, dtype=out.dtype).reshape(out.shape)).backward()
    backend.assert_close(out, backend.to_numpy(expected), dtype=dtype)
    backend.assert_close(z1.grad, backend.to_numpy(z2.grad), dtype=dtype, scale=10)


@pytest.mark.backend("torch")
@pytest.mark.parametrize("loss", ["sparse", "linear"])
def test_torch_scaled_cotangent_and_second_backward(backend, path, loss):
    """A scalar loss's gradient (computed in the forward pass) scaled by the cotangent, twice in one graph."""
    torch = only(backend, "torch")
    functional = importlib.import_module("torch.nn.functional")
    rng = np.random.default_rng(7)
    labels = torch.asarray(rng.integers(0, 5, size=6), device=backend.device)
    hidden = backend.asarray(rng.normal(size=(6, 3)), "float64")
    weight = backend.asarray(rng.normal(size=(5, 3)), "float64")
    options = {"label_smoothing": 0.1, "reduction": "mean"}

    def run(ours: bool) -> list[Any]:
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        if not ours:
            out = functional.cross_entropy(h @ w.T, labels, label_smoothing=0.1)
        elif loss == "sparse":
            out = al.sparse_softmax_cross_entropy(h @ w.T, labels, **options)
        else:
            out = al.linear_cross_entropy(h, w, labels, chunk_size=4, **options)
        grads = []
        for factor, retain in ((3.0, True), (-0.5, False)):
            (factor * out).backward(retain_graph=retain)
            grads += [h.grad, w.grad]
            h.grad = w.grad = None
        return grads

    for got, expected in zip(run(True), run(False), strict=True):
        backend.assert_close(got, backend.to_numpy(expected), dtype="float64")


@pytest.mark.backend("torch")
@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("option", list(TORCH_OPTIONS))
def test_torch_delegation_rule(backend, option, reduction, grad, configure):
    """Small plain calls go to F.cross_entropy, others and big ones to arrayloss; same values."""
    torch = only(backend, "torch")
    configure(delegate_to_torch=True)
    logits, labels, ours, _ = torch_problem(backend, option, "float64")
    z, y = backend.to_numpy(logits), backend.to_numpy(labels)
    options = {k: backend.to_numpy(v) if k == "class_weights" else v for k, v in ours.items()}

    def reference_value(x: np.ndarray) -> np.ndarray:
        return ref.sparse_ce(x, y, reduction=reduction, **options)

    expected_grad = ref.numeric_gradient(lambda x: reference_value(x).sum(), z, 1e-5, relative=True)
    delegated = backend.eager  # every option of this test is one PyTorch computes alike
    for limit in ("default", "zero"):  # zero: nothing is small enough to be delegated
        if limit == "zero":
            configure(delegate_forward_bytes=0, delegate_gradient_bytes=0)
        x = logits.clone().requires_grad_(grad)
        out = al.sparse_softmax_cross_entropy(x, labels, reduction=reduction, **ours)
        backend.assert_close(out, reference_value(z), dtype="float64")
        if grad:
            native = "AnalyticBackward" not in type(out.grad_fn).__name__
            assert native == (delegated and limit == "default"), type(out.grad_fn).__name__
            torch.sum(out).backward()
            backend.assert_close(x.grad, expected_grad, dtype="float64", scale=1e4)


@pytest.mark.backend("torch")
@pytest.mark.parametrize("grad", [False, True])
def test_torch_delegated_mean_of_nothing_is_zero(backend, grad, configure):
    """All examples ignored, or all of a class of weight 0: a mean of 0 with a zero gradient.

    PyTorch's own mean is NaN there (0 / 0).
    """
    torch = only(backend, "torch")
    configure(delegate_to_torch=True)
    logits = backend.asarray(np.random.default_rng(8).normal(size=(4, 3)), "float64").requires_grad_(grad)
    ignored = torch.asarray([-100, -100, -100, -100], device=backend.device)
    zero_class = torch.asarray([1, 1, 1, 1], device=backend.device)
    class_weights = backend.asarray([1.0, 0.0, 2.0], "float64")
    for labels, options in (
        (ignored, {"ignore_index": -100}),
        (zero_class, {"class_weights": class_weights}),
    ):
        out = al.sparse_softmax_cross_entropy(logits, labels, reduction="mean", **options)
        backend.assert_close(out, 0.0, dtype="float64")
        if grad:
            assert "AnalyticBackward" not in type(out.grad_fn).__name__, "expected the delegated path"
            out.backward()
            backend.assert_close(logits.grad, np.zeros((4, 3)), dtype="float64")
            logits.grad = None


@pytest.mark.backend("torch")
@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", ["per-example", "scalar", "one", "bool"])
def test_torch_delegated_example_weights(backend, shape, reduction, grad, configure):
    """Per-example weights on the delegated path: PyTorch's per-example losses times the weights,
    an example of weight 0 dropped even where its label's logit is -inf (no 0 * inf), with class
    weights and ignore_index; values and gradients (logits and weights) against the reference."""
    torch = only(backend, "torch")
    configure(delegate_to_torch=True)
    rng = np.random.default_rng(11)
    z = rng.normal(size=(6, 4)) * 3
    labels = np.array([0, 3, -100, 1, 2, 3])
    z[4, 2] = -np.inf  # example 4 has weight 0 below
    weights = {
        "per-example": np.array([1.0, 0.5, 2.0, 1.5, 0.0, 3.0]),
        "scalar": np.array(0.5),
        "one": np.array([2.0]),
        "bool": np.array([True, True, False, True, False, True]),
    }[shape]
    if shape in ("scalar", "one"):
        labels[4] = 1  # no weight of 0 to drop example 4
        z[4, 2] = 0.0
    class_weights = np.array([1.0, 2.0, 0.5, 1.0])
    options = {"class_weights": class_weights, "ignore_index": -100, "reduction": reduction}
    expected = ref.sparse_ce(z, labels, weights=weights, **options)
    x = backend.asarray(z, "float64").requires_grad_(grad)
    w = backend.asarray(weights, "bool" if shape == "bool" else "float64")
    w = w.requires_grad_(grad) if grad and shape != "bool" else w
    out = al.sparse_softmax_cross_entropy(
        x,
        torch.asarray(labels, device=backend.device),
        weights=w,
        class_weights=backend.asarray(class_weights, "float64"),
        ignore_index=-100,
        reduction=reduction,
    )
    backend.assert_close(out, expected, dtype="float64")
    if grad:
        assert "AnalyticBackward" not in type(out.grad_fn).__name__, "expected the delegated path"
        torch.sum(out).backward()
        finite = np.where(np.isfinite(z), z, -1e300)  # the reference's gradient at -inf is 0 anyway
        grad_z = ref.numeric_gradient(
            lambda v: ref.sparse_ce(v, labels, weights=weights, **options).sum(), finite
        )
        backend.assert_close(x.grad, grad_z, dtype="float64", scale=1e4)
        if shape != "bool":
            grad_w = ref.numeric_gradient(
                lambda v: ref.sparse_ce(z, labels, weights=v, **options).sum(), weights.astype(float)
            )
            # Example 4 is dropped: its infinite loss is no derivative either (arrayloss's convention).
            grad_w = np.where(np.isfinite(grad_w), grad_w, 0.0)
            backend.assert_close(w.grad, grad_w, dtype="float64", scale=1e4)


@pytest.mark.backend("torch")
def test_torch_delegated_labels_are_checked(backend, configure):
    """Out-of-range labels raise arrayloss's ValueError on the delegated path too, PyTorch's -100 included."""
    torch = only(backend, "torch")
    if not backend.eager:
        pytest.skip("labels are checked on eager host tensors only")
    configure(delegate_to_torch=True)
    logits = backend.asarray(np.zeros((3, 4)), "float32")
    for bad in (-100, -1, 4):
        labels = torch.asarray([0, bad, 1], device=backend.device)
        with pytest.raises(ValueError, match=f"labels contains {bad}, outside the valid range"):
            al.sparse_softmax_cross_entropy(logits, labels, reduction="mean")


@pytest.mark.backend("torch")
@pytest.mark.parametrize("option", ["plain", "weights_and_ignore", "smoothing_and_ignore"])
def test_torch_func_grad(backend, path, option):
    torch = only(backend, "torch")
    functional = importlib.import_module("torch.nn.functional")
    logits, labels, ours, theirs = torch_problem(backend, option, "float64")

    def loss(z):
        return al.sparse_softmax_cross_entropy(z, labels, reduction="mean", **ours)

    got = torch.func.grad(loss)(logits)
    expected = torch.func.grad(lambda z: functional.cross_entropy(z, labels, **theirs))(logits)
    backend.assert_close(got, backend.to_numpy(expected), dtype="float64")


@pytest.mark.backend("torch")
@pytest.mark.filterwarnings(*DYNAMO_WARNINGS)
@pytest.mark.parametrize("option", ["plain", "smoothing_and_ignore"])
def test_torch_compile_fullgraph(backend, path, option):
    torch = compiling(backend)
    functional = importlib.import_module("torch.nn.functional")
    logits, labels, ours, theirs = torch_problem(backend, option, "float32")

    z1, z2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    compiled = compile_fullgraph(
        torch,
        lambda z: al.sparse_softmax_cross_entropy(z, labels, reduction="mean", **ours),
        inductor=path == "analytic",
    )
    out = compiled(z1)
    out.backward()
    expected = functional.cross_entropy(z2, labels, **theirs)
    expected.backward()
    backend.assert_close(out, backend.to_numpy(expected), dtype="float32")
    backend.assert_close(z1.grad, backend.to_numpy(z2.grad), dtype="float32")


COMPILED_CASES = [
    "sparse-everything-mean",
    "sparse-everything-none",
    "sparse-axis-none",
    "dense-label_smoothing-mean",
    "dense-weights-none",
    "sequence-average_across_timesteps-average_across_batch",
    "sequence-average_across_batch",
    "sequence-dense_targets",
    "by_example-stacked-average",
    "binary-everything-mean",
    "binary-weights-none",
    "focal-alpha-none",
    "focal-weights-mean",
    "kl-log_targets-mean",
    "kl-axis-none",
]


@pytest.mark.backend("torch")
@pytest.mark.filterwarnings(*DYNAMO_WARNINGS)
@pytest.mark.parametrize("name", COMPILED_CASES)
def test_torch_compile_fullgraph_every_loss(backend, path, name):
    """Every loss compiles without a graph break, forward and backward, on both paths."""
    torch = compiling(backend)
    case = CASES[name]
    logits, args, options = on_backend(backend, case, "float64")
    z = logits.clone().requires_grad_()
    total = compile_fullgraph(
        torch, lambda x: torch.sum(case.loss(x, *args, **options)), inductor=path == "analytic"
    )
    out = total(z)
    out.backward()
    backend.assert_close(out, np.sum(reference_value(case, case.logits)), dtype="float64")
    backend.assert_close(z.grad, finite_difference_grad(case), dtype="float64", scale=1e4)


@pytest.mark.backend("torch")
@pytest.mark.filterwarnings(*DYNAMO_WARNINGS)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_torch_compile_fullgraph_linear_cross_entropy(backend, path, reduction):
    """Against F.cross_entropy of the materialised logits; "mean" takes the fused one-pass gradients."""
    torch = compiling(backend)
    functional = importlib.import_module("torch.nn.functional")
    rng = np.random.default_rng(3)
    hidden, weight = rng.normal(size=(10, 4)), rng.normal(size=(7, 4))
    labels = backend.asarray(rng.integers(0, 7, size=10), "int64")
    ours = [backend.asarray(a, "float64").requires_grad_() for a in (hidden, weight)]
    theirs = [backend.asarray(a, "float64").requires_grad_() for a in (hidden, weight)]

    def loss(h, w):
        return torch.sum(al.linear_cross_entropy(h, w, labels, reduction=reduction, chunk_size=3))

    compile_fullgraph(torch, loss, inductor=path == "analytic")(*ours).backward()
    expected = functional.cross_entropy(theirs[0] @ theirs[1].T, labels, reduction=reduction).sum()
    expected.backward()
    for got, want in zip(ours, theirs, strict=True):
        backend.assert_close(got.grad, backend.to_numpy(want.grad), dtype="float64")


@pytest.mark.backend("torch")
@pytest.mark.filterwarnings(*DYNAMO_WARNINGS)
def test_torch_compile_fullgraph_logsumexp_and_log_softmax(backend):
    torch = compiling(backend)
    x = backend.asarray(np.random.default_rng(4).normal(size=(5, 6)) * 10, "float64")
    compiled = torch.compile(lambda a: (al.logsumexp(a, axis=0), al.log_softmax(a)), fullgraph=True)
    lse, log_probs = compiled(x)
    backend.assert_close(lse, backend.to_numpy(torch.logsumexp(x, dim=0)), dtype="float64")
    backend.assert_close(log_probs, backend.to_numpy(torch.log_softmax(x, dim=-1)), dtype="float64")


@pytest.mark.backend("torch")
@pytest.mark.filterwarnings(*DYNAMO_WARNINGS)
def test_torch_compile_out_of_range_label_is_nan_while_eager_raises(backend):
    torch = compiling(backend)
    z, _ = random_problem(3, batch=4, classes=3)
    logits = backend.asarray(z)
    labels = torch.asarray([0, 9, 2, 1], device=backend.device)
    if backend.eager:
        with pytest.raises(ValueError, match="labels contains 9"):
            al.sparse_softmax_cross_entropy(logits, labels)
    compiled = torch.compile(lambda z, y: al.sparse_softmax_cross_entropy(z, y), fullgraph=True)
    got = backend.check_result(compiled(logits, labels), dtype="float64", shape=(4,))
    assert np.isnan(got[1])
    keep = [0, 2, 3]
    np.testing.assert_allclose(got[keep], ref.sparse_ce(z[keep], np.array([0, 2, 1])), rtol=1e-10)


@pytest.mark.backend("torch")
def test_torch_func_vmap(backend):
    """Inside ``torch.func.vmap`` values are not read: no eager label check; a label out of range is NaN."""
    torch = only(backend, "torch")
    functional = importlib.import_module("torch.nn.functional")
    rng = np.random.default_rng(3)
    logits = backend.asarray(rng.normal(size=(3, 5, 7)), "float64")
    labels = torch.asarray(rng.integers(0, 7, size=(3, 5)), device=backend.device)
    labels[0, 1] = -100

    def ours(z, y):
        return al.sparse_softmax_cross_entropy(z, y, ignore_index=-100, reduction="mean")

    got = backend.check_result(torch.func.vmap(ours)(logits, labels), dtype="float64", shape=(3,))
    expected = torch.func.vmap(functional.cross_entropy)(logits, labels)
    np.testing.assert_allclose(got, backend.to_numpy(expected), rtol=1e-12)
    labels[2, 0] = 7  # out of range
    got = backend.to_numpy(torch.func.vmap(ours)(logits, labels))
    assert np.isnan(got[2]) and np.all(np.isfinite(got[:2]))


@pytest.mark.backend("torch")
@pytest.mark.parametrize(
    "name", ["logsumexp", "log_softmax", "log_softmax-axis0", "sparse-axis0", "dense-axis0", "kl-axis0"]
)
def test_torch_func_vmap_of_every_layout(backend, name):
    """``torch.func.vmap`` of the forward pass where a class axis moves (``torch.moveaxis`` has no
    batching rule there): the values of a loop over the batch."""
    torch = only(backend, "torch")
    rng = np.random.default_rng(4)
    x = backend.asarray(rng.normal(size=(3, 4, 5)), "float64")
    labels = torch.asarray(rng.integers(0, 4, size=(3, 5)), device=backend.device)
    targets = torch.softmax(backend.asarray(rng.normal(size=(3, 4, 5)), "float64"), dim=1)
    calls = {
        "logsumexp": lambda z, y, t: al.logsumexp(z),
        "log_softmax": lambda z, y, t: al.log_softmax(z),
        "log_softmax-axis0": lambda z, y, t: al.log_softmax(z, axis=0),
        "sparse-axis0": lambda z, y, t: al.sparse_softmax_cross_entropy(z, y, axis=0),
        "dense-axis0": lambda z, y, t: al.softmax_cross_entropy(z, t, axis=0),
        "kl-axis0": lambda z, y, t: al.kl_divergence(torch.log_softmax(z, dim=0), t, axis=0),
    }
    fn = calls[name]
    got = torch.func.vmap(fn)(x, labels, targets)
    expected = torch.stack([fn(x[i], labels[i], targets[i]) for i in range(3)])
    got = backend.check_result(got, dtype="float64", shape=tuple(expected.shape))
    np.testing.assert_allclose(got, backend.to_numpy(expected), rtol=1e-12)


@pytest.mark.backend("torch")
@pytest.mark.parametrize("order", ["vmap_of_grad", "grad_of_vmap"])
def test_torch_func_per_example_gradients(backend, path, order):
    """``vmap(grad(loss))`` (per-example gradients, as in DP-SGD) and ``grad(vmap(loss))`` against PyTorch.

    Under ``vmap`` the analytic backward steps aside (its rule closes over the labels) and autograd
    differentiates the composition.
    """
    torch = only(backend, "torch")
    functional = importlib.import_module("torch.nn.functional")
    rng = np.random.default_rng(4)
    logits = backend.asarray(rng.normal(size=(3, 5, 7)), "float64")
    labels = torch.asarray(rng.integers(0, 7, size=(3, 5)), device=backend.device)

    def ours(z, y):
        return al.sparse_softmax_cross_entropy(z, y, label_smoothing=0.1, reduction="mean")

    def theirs(z, y):
        return functional.cross_entropy(z, y, label_smoothing=0.1)

    def transform(loss):
        if order == "vmap_of_grad":
            return torch.func.vmap(torch.func.grad(loss))(logits, labels)
        return torch.func.grad(lambda z: torch.func.vmap(loss)(z, labels).sum())(logits)

    got = backend.check_result(transform(ours), dtype="float64", shape=(3, 5, 7))
    np.testing.assert_allclose(got, backend.to_numpy(transform(theirs)), rtol=1e-10, atol=1e-12)


@pytest.mark.backend("torch")
@pytest.mark.parametrize("name", list(CASES))
def test_torch_autograd_matches_value_and_grad(backend, path, name):
    torch = only(backend, "torch")
    case = CASES[name]
    logits, args, options = on_backend(backend, case, "float64")
    leaves = logits if case.steps else [logits]
    leaves = [leaf.clone().requires_grad_() for leaf in leaves]
    out = case.loss(leaves if case.steps else leaves[0], *args, **options)
    assert_path(out, path)
    torch.sum(out).backward()
    grad = [leaf.grad for leaf in leaves] if case.steps else leaves[0].grad
    expected = gradient_to_numpy(
        backend, case, al.value_and_grad(case.loss)(logits, *args, **options)[1], "float64"
    )
    got = gradient_to_numpy(backend, case, grad, "float64")
    np.testing.assert_allclose(got, expected, rtol=AUTODIFF_RTOL, atol=1e-12)


@pytest.mark.backend("torch")
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_torch_half_precision_backward(backend, path, dtype):
    torch = only(backend, "torch")
    needs(backend, dtype)
    case = held(backend, CASES["sparse-everything-mean"], dtype)
    logits, args, options = on_backend(backend, case, dtype)
    z = logits.clone().requires_grad_()
    out = case.loss(z, *args, **options)
    assert_path(out, path)
    out.backward()
    backend.assert_close(out, reference_value(case, case.logits), dtype=dtype)
    backend.assert_close(z.grad, finite_difference_grad(case), dtype=dtype)
    assert torch.all(torch.isfinite(z.grad))


def with_respect_to(case: Case, position: int | str, values: np.ndarray) -> np.ndarray:
    """Finite differences of ``sum(reference)`` with respect to one input (a positional index or option)."""

    def total(v: np.ndarray) -> float:
        args, options = list(case.args), dict(case.options)
        if isinstance(position, int):
            args[position] = v
        else:
            options[position] = v
        return float(np.sum(case.reference(case.logits, *args, **options)))

    return ref.numeric_gradient(total, values)


# (case, input, where it sits): weights and soft targets whose gradient autodiff reaches.
SIDE_INPUTS = [
    ("sparse-everything-mean", "weights"),
    ("sparse-everything-sum", "class_weights"),
    ("dense-weights-mean", "weights"),
    ("dense-weights-mean", 0),
    ("dense-label_smoothing-none", 0),
    ("sequence-average_across_timesteps-average_across_batch", 1),
    ("by_example-stacked-total", 1),  # averaged, a row of zero weights has derivatives of 1e12
    ("binary-everything-mean", 0),
    ("binary-everything-mean", "weights"),
    ("binary-everything-sum", "pos_weight"),
    ("focal-weights-mean", 0),
    ("kl-log_targets-none", 0),
    ("kl-weights-mean", "weights"),
]


@pytest.mark.backend("torch")
@pytest.mark.parametrize(("name", "position"), SIDE_INPUTS)
def test_torch_gradient_reaches_weights_and_targets(backend, path, name, position):
    only(backend, "torch")
    case = CASES[name]
    logits, args, options = on_backend(backend, case, "float64")
    values = case.args[position] if isinstance(position, int) else case.options[position]
    side = backend.asarray(values).requires_grad_()
    if isinstance(position, int):
        args[position] = side
    else:
        options[position] = side
    z = logits.clone().requires_grad_()
    out = case.loss(z, *args, **options)
    assert_path(out, "composition")  # autograd must see the weights: the analytic backward steps aside
    out.sum().backward()
    backend.assert_close(side.grad, with_respect_to(case, position, values), dtype="float64", scale=1e4)
    backend.assert_close(z.grad, finite_difference_grad(case), dtype="float64", scale=1e4)


@pytest.mark.backend("jax")
@pytest.mark.parametrize(("name", "position"), SIDE_INPUTS)
def test_jax_gradient_reaches_weights_and_targets(backend, name, position):
    only(backend, "jax")
    jax = importlib.import_module("jax")
    case = CASES[name]
    logits, args, options = on_backend(backend, case, "float64")
    values = case.args[position] if isinstance(position, int) else case.options[position]

    def total(side):
        a, o = list(args), dict(options)
        if isinstance(position, int):
            a[position] = side
        else:
            o[position] = side
        return backend.module.sum(case.loss(logits, *a, **o))

    got = jax.grad(total)(backend.asarray(values))
    backend.assert_close(got, with_respect_to(case, position, values), dtype="float64", scale=1e4)


FORWARD_MODE_CASES = [
    "sparse-everything-mean",
    "sparse-everything-none",
    "dense-label_smoothing-mean",
    "sequence-dense_targets",
    "binary-everything-mean",
    "focal-gamma_below_one-none",
    "kl-log_targets-mean",
]


@pytest.mark.backend("jax")
@pytest.mark.parametrize("name", FORWARD_MODE_CASES)
def test_jax_forward_mode_and_second_order(backend, name):
    """``jax.jvp`` and ``jax.jacfwd`` (forward mode) against the reverse-mode gradient of the reference,
    and ``grad`` of ``grad`` (a Hessian-vector product) against finite differences of that gradient."""
    only(backend, "jax")
    jax = importlib.import_module("jax")
    jnp = backend.module
    case = CASES[name]
    logits, args, options = on_backend(backend, case, "float64")

    def total(z):
        return jnp.sum(case.loss(z, *args, **options))

    direction = np.random.default_rng(5).normal(size=case.logits.shape)
    expected_grad = finite_difference_grad(case)
    value, tangent = jax.jvp(total, (logits,), (backend.asarray(direction),))
    backend.assert_close(value, np.sum(reference_value(case, case.logits)), dtype="float64")
    np.testing.assert_allclose(float(tangent), np.sum(expected_grad * direction), rtol=1e-6, atol=1e-8)
    backend.assert_close(jax.jacfwd(total)(logits), expected_grad, dtype="float64", scale=1e4)

    def directional_grad(z):  # d/dt of grad(total)(z + t * direction) at t = 0
        return jax.jvp(jax.grad(total), (z,), (backend.asarray(direction),))[1]

    step = 1e-4
    up = jax.grad(total)(backend.asarray(case.logits + step * direction))
    down = jax.grad(total)(backend.asarray(case.logits - step * direction))
    expected_hvp = (backend.to_numpy(up) - backend.to_numpy(down)) / (2 * step)
    tangent_dot = backend.asarray(direction)
    reverse_over_reverse = jax.grad(lambda z: jnp.vdot(jax.grad(total)(z), tangent_dot))(logits)
    for got in (directional_grad(logits), reverse_over_reverse):
        np.testing.assert_allclose(backend.to_numpy(got), expected_hvp, rtol=1e-5, atol=1e-7)


@pytest.mark.backend("jax")
@pytest.mark.parametrize("name", list(CASES))
def test_jax_jit_grad_vmap(backend, name):
    only(backend, "jax")
    jax = importlib.import_module("jax")
    jnp = backend.module
    case = CASES[name]
    logits, args, options = on_backend(backend, case, "float64")

    def loss(z):
        return case.loss(z, *args, **options)

    eager = loss(logits)
    backend.assert_close(jax.jit(loss)(logits), backend.to_numpy(eager), dtype="float64")
    got = jax.grad(lambda z: jnp.sum(loss(z)))(logits)
    _, expected = al.value_and_grad(case.loss)(logits, *args, **options)
    np.testing.assert_allclose(
        gradient_to_numpy(backend, case, got, "float64"),
        gradient_to_numpy(backend, case, expected, "float64"),
        rtol=AUTODIFF_RTOL,
        atol=1e-12,
    )
    jitted_grad = jax.jit(lambda z: al.value_and_grad(case.loss)(z, *args, **options)[1])(logits)
    np.testing.assert_allclose(
        gradient_to_numpy(backend, case, jitted_grad, "float64"),
        gradient_to_numpy(backend, case, expected, "float64"),
        rtol=1e-12,
        atol=1e-14,
    )
    batch = jax.tree_util.tree_map(lambda z: jnp.stack([z, 0.5 * z]), logits)
    mapped = jax.vmap(loss)(batch)
    halved = loss(jax.tree_util.tree_map(lambda z: 0.5 * z, logits))
    backend.assert_close(
        mapped, np.stack([backend.to_numpy(eager), backend.to_numpy(halved)]), dtype="float64"
    )


def optax_problem(backend, seed: int):
    z, labels = random_problem(seed)
    weights = np.where(labels == -100, 0.0, 1.0)
    weights[0] = 0.0  # and one zero weight
    safe = np.where(labels == -100, 0, labels)
    return backend.asarray(z), labels, weights, safe


@pytest.mark.backend("jax")
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_jax_matches_optax_integer_labels(backend, label_smoothing):
    only(backend, "jax")
    jax = importlib.import_module("jax")
    optax = pytest.importorskip("optax")
    jnp = backend.module
    logits, labels, weights, safe = optax_problem(backend, 11)
    w = jnp.asarray(weights)
    y = jnp.asarray(labels)

    def ours(z):
        return al.sparse_softmax_cross_entropy(
            z, y, weights=w, ignore_index=-100, label_smoothing=label_smoothing, reduction="mean"
        )

    def theirs(z):
        if label_smoothing:
            targets = optax.smooth_labels(jax.nn.one_hot(jnp.asarray(safe), z.shape[-1]), label_smoothing)
            per_example = optax.softmax_cross_entropy(z, targets)
        else:
            per_example = optax.softmax_cross_entropy_with_integer_labels(z, jnp.asarray(safe))
        return jnp.sum(w * per_example) / jnp.sum(w)

    backend.assert_close(ours(logits), np.asarray(theirs(logits)), dtype="float64")
    expected = np.asarray(jax.grad(theirs)(logits))
    backend.assert_close(jax.grad(ours)(logits), expected, dtype="float64", scale=1e2)
    _, grad = al.value_and_grad(al.sparse_softmax_cross_entropy)(
        logits, y, weights=w, ignore_index=-100, label_smoothing=label_smoothing, reduction="mean"
    )
    backend.assert_close(grad, expected, dtype="float64", scale=1e2)


@pytest.mark.backend("jax")
def test_jax_matches_optax_dense_targets(backend):
    only(backend, "jax")
    jax = importlib.import_module("jax")
    optax = pytest.importorskip("optax")
    jnp = backend.module
    rng = np.random.default_rng(5)
    logits = backend.asarray(rng.normal(size=(7, 4)) * 2)
    targets = backend.asarray(rng.dirichlet(np.ones(4), size=7))

    def theirs(z):
        return jnp.mean(optax.softmax_cross_entropy(z, targets))

    expected = np.asarray(jax.grad(theirs)(logits))
    value, grad = al.value_and_grad(al.softmax_cross_entropy)(logits, targets, reduction="mean")
    backend.assert_close(value, np.asarray(theirs(logits)), dtype="float64")
    backend.assert_close(grad, expected, dtype="float64", scale=1e2)
    got = jax.grad(lambda z: al.softmax_cross_entropy(z, targets, reduction="mean"))(logits)
    backend.assert_close(got, expected, dtype="float64", scale=1e2)


@pytest.mark.backend("jax")
def test_jax_jit_out_of_range_label_is_nan(backend):
    only(backend, "jax")
    jax = importlib.import_module("jax")
    z, _ = random_problem(3, batch=4, classes=3)
    labels = backend.asarray(np.array([0, 9, 2, 1]))
    got = backend.check_result(
        jax.jit(al.sparse_softmax_cross_entropy)(backend.asarray(z), labels), dtype="float64", shape=(4,)
    )
    assert np.isnan(got[1])
    keep = [0, 2, 3]
    np.testing.assert_allclose(got[keep], ref.sparse_ce(z[keep], np.array([0, 2, 1])), rtol=1e-10)


@pytest.mark.backend("dask")
def test_dask_raising_scheduler_catches_a_compute(backend):
    only(backend, "dask")
    x = backend.asarray(np.ones((4, 3)))
    with no_compute(backend), pytest.raises(AssertionError, match="computed before"):
        backend.module.sum(x).compute()


@pytest.mark.backend("dask")
@pytest.mark.parametrize("name", list(CASES))
def test_dask_losses_are_lazy(backend, name):
    da = only(backend, "dask")
    case = CASES[name]
    logits, args, options = on_backend(backend, case, "float64")
    with no_compute(backend):
        out = case.loss(logits, *args, **options)
        lse = al.logsumexp(logits if not case.steps else logits[0])
        log_probs = al.log_softmax(logits if not case.steps else logits[0])
    assert isinstance(out, da.Array) and isinstance(lse, da.Array) and isinstance(log_probs, da.Array)
    backend.assert_close(out, reference_value(case, case.logits), dtype="float64")
    first = case.logits if not case.steps else case.logits[:, 0]
    backend.assert_close(lse, ref.logsumexp(first), dtype="float64")
    backend.assert_close(log_probs, first - ref.logsumexp(first)[..., None], dtype="float64")


@pytest.mark.backend("torch")
def test_torch_composition_is_not_chunked_under_autograd(backend, configure):
    """Autograd through row blocks would build a whole-array zero gradient per block (quadratic)."""
    torch = only(backend, "torch")
    configure(analytic_backward=False, block_bytes=1)
    z, labels = random_problem(4)
    logits = backend.asarray(z).requires_grad_()
    out = al.sparse_softmax_cross_entropy(
        logits, torch.asarray(labels, device=backend.device), ignore_index=-100
    )
    nodes, seen = [out.grad_fn], set()
    while nodes:
        node = nodes.pop()
        if node is not None and node not in seen:
            seen.add(node)
            nodes.extend(next_node for next_node, _ in node.next_functions)
    names = {type(node).__name__ for node in seen}
    assert not any(name.startswith("Slice") for name in names), sorted(names)
    backend.assert_close(out, ref.sparse_ce(z, labels, ignore_index=-100), dtype="float64")


MASKED_GARBAGE = [
    "sparse-weights",
    "sparse-ignore_index",
    "sparse-class_weights",
    "dense-weights",
    "sequence",
    "by_example",
]


def masked_garbage(name: str) -> tuple[Any, np.ndarray, list[np.ndarray], dict[str, Any], tuple[Any, ...]]:
    """A call whose examples of weight 0 (or ignored) hold NaN and +-inf: the loss, the logits,
    further positional arrays, options (NumPy), and the index of the masked examples."""
    rows = np.array([[1.0, 2.0, 0.5], [np.nan, np.inf, 0.0], [0.3, -np.inf, 0.1], [np.inf, 1.0, 2.0]])
    labels = np.array([0, 1, 2, 1])
    weights = np.array([1.0, 0.0, 2.0, 0.0])
    masked = (np.array([1, 3]),)
    mean = {"reduction": "mean"}
    if name == "sparse-weights":
        return al.sparse_softmax_cross_entropy, rows, [labels], {"weights": weights, **mean}, masked
    if name == "sparse-ignore_index":
        ignored = np.array([0, -1, 2, -1])
        return al.sparse_softmax_cross_entropy, rows, [ignored], {"ignore_index": -1, **mean}, masked
    if name == "sparse-class_weights":  # rows 1 and 3 have the label of class weight 0
        class_weights = np.array([1.0, 0.0, 1.0])
        return (
            al.sparse_softmax_cross_entropy,
            rows,
            [labels],
            {"class_weights": class_weights, **mean},
            masked,
        )
    if name == "dense-weights":
        return al.softmax_cross_entropy, rows, [np.eye(3)[labels]], {"weights": weights, **mean}, masked
    loss = al.sequence_loss if name == "sequence" else al.sequence_loss_by_example
    steps_masked = (np.array([0, 1]), np.array([1, 1]))
    return loss, rows.reshape(2, 2, 3), [labels.reshape(2, 2), weights.reshape(2, 2)], {}, steps_masked


def check_masked_gradient(backend, name: str, got: Any, expected: Any) -> None:
    """``got`` (autodiff) is ``expected`` (``value_and_grad``), exactly 0 at the masked examples."""
    masked = masked_garbage(name)[-1]
    got, expected = backend.to_numpy(got), backend.to_numpy(expected)
    np.testing.assert_array_equal(got[masked], 0.0)
    assert np.all(np.isfinite(got)), got
    np.testing.assert_allclose(got, expected, rtol=AUTODIFF_RTOL, atol=1e-12)


def masked_garbage_on(backend, name: str) -> tuple[Any, Any, list[Any], dict[str, Any]]:
    loss, logits, args, options, _ = masked_garbage(name)
    options = {k: backend.asarray(v) if isinstance(v, np.ndarray) else v for k, v in options.items()}
    return loss, backend.asarray(logits), [backend.asarray(a) for a in args], options


@pytest.mark.backend("torch")
@pytest.mark.parametrize("mode", ["default", "composition", "weights_require_grad"])
@pytest.mark.parametrize("name", MASKED_GARBAGE)
def test_torch_masked_garbage_has_zero_gradient(backend, name, mode, configure):
    """Examples of weight 0 (or ignored) whose logits hold NaN or inf get a gradient of exactly 0 on
    every torch path: the analytic backward, ``F.cross_entropy`` (small calls, the default here),
    the composition, and the composition that also differentiates the weights."""
    torch = only(backend, "torch")
    loss, logits, args, options = masked_garbage_on(backend, name)
    expected = al.value_and_grad(loss)(logits, *args, **options)[1]
    if mode == "composition":
        configure(analytic_backward=False, delegate_to_torch=False)
    if mode == "weights_require_grad":
        if "weights" in options:
            options["weights"] = options["weights"].clone().requires_grad_()
        elif name in ("sequence", "by_example"):
            args[-1] = args[-1].clone().requires_grad_()
        else:
            pytest.skip("no weights to differentiate")
    z = logits.clone().requires_grad_()
    torch.sum(loss(z, *args, **options)).backward()
    check_masked_gradient(backend, name, z.grad, expected)


@pytest.mark.backend("jax")
@pytest.mark.parametrize("name", MASKED_GARBAGE)
def test_jax_masked_garbage_has_zero_gradient(backend, name):
    """As on torch: JAX differentiates the composition of these losses, under ``grad``, ``jit``
    and ``vmap``."""
    only(backend, "jax")
    jax = importlib.import_module("jax")
    jnp = backend.module
    loss, logits, args, options = masked_garbage_on(backend, name)
    expected = al.value_and_grad(loss)(logits, *args, **options)[1]

    def total(z):
        return jnp.sum(loss(z, *args, **options))

    for got in (jax.grad(total)(logits), jax.jit(jax.grad(total))(logits)):
        check_masked_gradient(backend, name, got, expected)
    mapped = jax.vmap(jax.grad(total))(jnp.stack([logits, logits]))
    check_masked_gradient(backend, name, mapped[1], expected)
