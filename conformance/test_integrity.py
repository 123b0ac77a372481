"""Integrity: inputs are never written or aliased, every integer label dtype works, calls are
deterministic and thread-safe, and no call changes the package's module state.

Each call in :data:`CALLS` runs a public function on shared inputs and knows its float64
reference value, so every test also checks the results.
"""

import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import reference

import arrayloss as al
from arrayloss.compat import tf

RNG = np.random.default_rng(2024)
DATA = {
    "logits": RNG.normal(scale=2.0, size=(6, 4)),
    "labels": np.array([0, 3, 1, 1, 2, 3]),
    "weights": np.array([1.0, 0.5, 0.0, 2.0, 1.0, 1.0]),
    "class_weights": np.array([1.0, 2.0, 0.5, 1.0]),
    "targets": RNG.dirichlet(np.ones(4), size=6),
    "seq_logits": RNG.normal(size=(3, 5, 4)),
    "seq_targets": RNG.integers(0, 4, size=(3, 5)),
    "seq_weights": (RNG.uniform(size=(3, 5)) > 0.3).astype(float),
    "hidden": RNG.normal(size=(6, 3)),
    "weight": RNG.normal(size=(4, 3)),
    "bias": RNG.normal(size=4),
}
LABEL_NAMES = ("labels", "seq_targets")


@dataclass(frozen=True)
class Call:
    """``run(arrays)`` calls arrayloss on backend arrays; ``expect(data)`` is its float64 reference."""

    id: str
    run: Callable[[dict[str, Any]], Any]
    expect: Callable[[dict[str, np.ndarray]], np.ndarray]


def sparse_options(a):
    return {"weights": a["weights"], "class_weights": a["class_weights"], "ignore_index": 3}


def legacy_reference(d):
    return reference.legacy_sequence_loss_by_example(d["seq_logits"], d["seq_targets"], d["seq_weights"])


def mean_ce_gradient(z, labels):
    """d/dz of the mean sparse cross entropy: (softmax(z) - onehot(labels)) / N."""
    softmax = np.exp(z - reference.logsumexp(z)[:, None])
    return (softmax - np.eye(z.shape[1])[labels]) / z.shape[0]


def log_softmax_reference(z, axis):
    return z - np.expand_dims(reference.logsumexp(z, axis=axis), axis)


CALLS = [
    Call(
        "sparse-none",
        lambda a: al.sparse_softmax_cross_entropy(a["logits"], a["labels"]),
        lambda d: reference.sparse_ce(d["logits"], d["labels"]),
    ),
    *[
        Call(
            f"sparse-options-{reduction}",
            lambda a, r=reduction: al.sparse_softmax_cross_entropy(
                a["logits"], a["labels"], label_smoothing=0.1, z_loss=1e-3, reduction=r, **sparse_options(a)
            ),
            lambda d, r=reduction: reference.sparse_ce(
                d["logits"], d["labels"], label_smoothing=0.1, z_loss=1e-3, reduction=r, **sparse_options(d)
            ),
        )
        for reduction in ("none", "sum", "mean")
    ],
    Call(
        "sparse-axis-0",
        lambda a: al.sparse_softmax_cross_entropy(a["logits"].T, a["labels"], axis=0, reduction="mean"),
        lambda d: reference.sparse_ce(d["logits"], d["labels"], reduction="mean"),
    ),
    Call(
        "linear-options-mean",
        lambda a: al.linear_cross_entropy(
            a["hidden"],
            a["weight"],
            a["labels"],
            bias=a["bias"],
            chunk_size=4,
            reduction="mean",
            **sparse_options(a),
        ),
        lambda d: reference.sparse_ce(
            d["hidden"] @ d["weight"].T + d["bias"], d["labels"], reduction="mean", **sparse_options(d)
        ),
    ),
    Call(
        "sparse-gradient",
        lambda a: al.value_and_grad(al.sparse_softmax_cross_entropy)(
            a["logits"], a["labels"], reduction="mean"
        )[1],
        lambda d: mean_ce_gradient(d["logits"], d["labels"]),
    ),
    Call(
        "dense-mean",
        lambda a: al.softmax_cross_entropy(
            a["logits"], a["targets"], weights=a["weights"], label_smoothing=0.2, reduction="mean"
        ),
        lambda d: reference.dense_ce(
            d["logits"], d["targets"], weights=d["weights"], label_smoothing=0.2, reduction="mean"
        ),
    ),
    Call(
        "sequence-loss",
        lambda a: al.sequence_loss(a["seq_logits"], a["seq_targets"], a["seq_weights"]),
        lambda d: reference.tfa_sequence_loss(d["seq_logits"], d["seq_targets"], d["seq_weights"]),
    ),
    Call(
        "sequence-loss-per-step",
        lambda a: al.sequence_loss(
            a["seq_logits"], a["seq_targets"], average_across_timesteps=False, average_across_batch=False
        ),
        lambda d: reference.tfa_sequence_loss(
            d["seq_logits"], d["seq_targets"], average_across_timesteps=False, average_across_batch=False
        ),
    ),
    Call(
        "by-example-stacked",
        lambda a: al.sequence_loss_by_example(a["seq_logits"], a["seq_targets"], a["seq_weights"]),
        lambda d: reference.legacy_sequence_loss_by_example(
            d["seq_logits"], d["seq_targets"], d["seq_weights"]
        ),
    ),
    Call(
        "by-example-list",
        lambda a: al.sequence_loss_by_example(
            *([x[:, t, ...] for t in range(5)] for x in (a["seq_logits"], a["seq_targets"], a["seq_weights"]))
        ),
        lambda d: reference.legacy_sequence_loss_by_example(
            d["seq_logits"], d["seq_targets"], d["seq_weights"]
        ),
    ),
    Call(
        "logsumexp",
        lambda a: al.logsumexp(a["seq_logits"], axis=1),
        lambda d: reference.logsumexp(d["seq_logits"], axis=1),
    ),
    Call(
        "log-softmax",
        lambda a: al.log_softmax(a["logits"], axis=0),
        lambda d: log_softmax_reference(d["logits"], axis=0),
    ),
    Call(
        "tf-sparse",
        lambda a: tf.sparse_softmax_cross_entropy_with_logits(labels=a["labels"], logits=a["logits"]),
        lambda d: reference.sparse_ce(d["logits"], d["labels"]),
    ),
    Call(
        "tf-sequence-loss",
        lambda a: tf.sequence_loss(
            [a["seq_logits"][:, t, ...] for t in range(5)],
            [a["seq_targets"][:, t, ...] for t in range(5)],
            [a["seq_weights"][:, t, ...] for t in range(5)],
        ),
        lambda d: (
            np.sum(
                reference.legacy_sequence_loss_by_example(d["seq_logits"], d["seq_targets"], d["seq_weights"])
            )
            / 3
        ),
    ),
]
CALL_IDS = [call.id for call in CALLS]
LABEL_CALLS = [
    call for call in CALLS if call.id.startswith(("sparse", "linear", "sequence", "by-example", "tf"))
]


def make_inputs(backend, label_dtype="int32"):
    """The :data:`DATA` arrays on the backend (float32, labels in ``label_dtype``), and what they hold."""
    arrays = {
        name: backend.asarray(values, label_dtype if name in LABEL_NAMES else "float32")
        for name, values in DATA.items()
    }
    return arrays, {name: backend.to_numpy(x) for name, x in arrays.items()}


def check(backend, call, out, held):
    expected = np.asarray(call.expect(held))
    backend.assert_close(out, expected, dtype="float32")


def bits(backend, out):
    """The exact content of ``out`` (a float64 copy is exact for every float dtype)."""
    a = backend.to_numpy(out)
    return a.shape, a.tobytes()


def freeze(backend, arrays):
    """Make the inputs unwritable where the library allows it; return a check that nothing changed."""
    before = {name: backend.to_numpy(x).copy() for name, x in arrays.items()}
    if backend.name == "numpy":
        for x in arrays.values():
            x.flags.writeable = False
    versions = {name: x._version for name, x in arrays.items()} if backend.name == "torch" else {}

    def unchanged():
        for name, x in arrays.items():
            np.testing.assert_array_equal(backend.to_numpy(x), before[name], err_msg=f"{name} was modified")
            if name in versions:
                assert x._version == versions[name], f"{name} was written in place"

    return unchanged


@pytest.mark.parametrize("call", CALLS, ids=CALL_IDS)
def test_inputs_are_never_modified(backend, call):
    arrays, held = make_inputs(backend)
    unchanged = freeze(backend, arrays)
    check(backend, call, call.run(arrays), held)
    unchanged()


@pytest.mark.parametrize("call", CALLS, ids=CALL_IDS)
def test_results_never_alias_inputs(backend, call):
    if backend.name not in ("numpy", "torch"):
        pytest.skip(f"{backend.name} arrays expose no memory to compare (immutable, lazy or wrapped)")
    arrays, held = make_inputs(backend)
    out = call.run(arrays)
    check(backend, call, out, held)
    for name, x in arrays.items():
        if backend.name == "numpy":
            assert not np.shares_memory(out, x), f"the result shares memory with {name}"
        else:
            assert out.untyped_storage().data_ptr() != x.untyped_storage().data_ptr(), (
                f"the result shares storage with {name}"
            )


@pytest.mark.parametrize("call", LABEL_CALLS, ids=[call.id for call in LABEL_CALLS])
def test_every_integer_label_dtype(backend, call):
    for dtype in backend.int_dtypes:
        arrays, held = make_inputs(backend, dtype)
        check(backend, call, call.run(arrays), held)


def test_ignore_index_outside_every_label_dtype(backend):
    """``ignore_index=-100`` with ``uint8`` labels matches no label (and raises nowhere)."""
    for dtype in backend.int_dtypes:
        arrays, held = make_inputs(backend, dtype)
        out = al.sparse_softmax_cross_entropy(
            arrays["logits"], arrays["labels"], ignore_index=-100, reduction="mean"
        )
        expected = reference.sparse_ce(held["logits"], held["labels"], ignore_index=-100, reduction="mean")
        backend.assert_close(out, expected, dtype="float32")


def on_cpu(backend):
    if backend.name == "cupy" or (backend.name == "torch" and backend.device.type != "cpu"):
        pytest.skip("bitwise reproducibility is checked on CPU devices")


@pytest.mark.parametrize("call", CALLS, ids=CALL_IDS)
def test_same_call_twice_is_bitwise_identical(backend, call):
    on_cpu(backend)
    arrays, held = make_inputs(backend)
    first = call.run(arrays)
    check(backend, call, first, held)
    assert bits(backend, first) == bits(backend, call.run(arrays))


def test_concurrent_calls_match_a_single_thread(backend):
    if backend.name not in ("numpy", "torch") or (backend.name == "torch" and backend.device.type != "cpu"):
        pytest.skip("thread safety is checked on NumPy and torch CPU")
    arrays, held = make_inputs(backend)
    serial = {}
    for call in CALLS:
        out = call.run(arrays)
        check(backend, call, out, held)
        serial[call.id] = bits(backend, out)
    work = [call for _ in range(8) for call in CALLS]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda call: (call.id, bits(backend, call.run(arrays))), work))
    assert len(results) == len(work)
    mismatched = sorted({name for name, got in results if got != serial[name]})
    assert not mismatched, f"results differ from a single-threaded run: {mismatched}"


def module_state():
    """Every arrayloss module's globals: identity, and a deep snapshot of mutable containers."""
    state = {}
    for name, module in sorted(sys.modules.items()):
        if name == "arrayloss" or name.startswith("arrayloss."):
            for key, value in vars(module).items():
                snapshot = repr(value) if isinstance(value, (list, dict, set, bytearray)) else None
                state[f"{name}.{key}"] = (id(value), snapshot)
    return state


def test_calls_leave_module_state_unchanged(backend):
    arrays, held = make_inputs(backend)
    for call in CALLS:  # first calls may import modules lazily
        call.run(arrays)
    before = module_state()
    for call in CALLS:
        check(backend, call, call.run(arrays), held)
    after = module_state()
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"calls changed module state: {changed}"


@pytest.fixture(scope="module")
def strict_backend(backend):
    if backend.name != "numpy":
        pytest.skip("NumPy against array-api-strict: once, in the numpy session")
    from conftest import _make_backend

    return _make_backend("array_api_strict", "default")


def with_non_finite_rows(data):
    """:data:`DATA` with logits rows of ``-inf``, one holding ``+inf``, one NaN and one ``-inf`` among
    finite logits (the first four rows, or steps of the first example)."""
    changed = dict(data)
    for name in ("logits", "seq_logits"):
        rows = data[name].copy().reshape(-1, data[name].shape[-1])
        rows[0] = -np.inf
        rows[1, 2] = np.inf
        rows[2, 0] = np.nan
        rows[3, 1] = -np.inf
        changed[name] = rows.reshape(data[name].shape)
    return changed


# Calls whose NumPy path rounds differently from the standard one: softmax_cross_entropy's sum of
# products is NumPy's vecdot there (its own summation order), xp.sum(t * z) elsewhere.
ROUNDED = {"dense-mean"}


@pytest.mark.parametrize("finite", [True, False], ids=["finite", "non-finite"])
@pytest.mark.parametrize("call", CALLS, ids=CALL_IDS)
def test_numpy_shortcuts_give_the_numbers_of_the_standard_path(backend, strict_backend, call, finite):
    """NumPy's shortcuts (its ufuncs' ``reduce`` for reductions, an integer-array gather, no masks when
    every row's maximum is finite) give exactly the numbers of the standard path, which
    array-api-strict takes while computing with NumPy underneath."""
    data = DATA if finite else with_non_finite_rows(DATA)
    results = []
    for b in (backend, strict_backend):
        arrays = {n: b.asarray(x, "int64" if n in LABEL_NAMES else "float32") for n, x in data.items()}
        with np.errstate(invalid="ignore", divide="ignore"):  # rows of -inf: NaN (0 / 0) where counted
            out = call.run(arrays)
        if finite:
            check(b, call, out, {name: b.to_numpy(x) for name, x in arrays.items()})
        results.append(b.to_numpy(out))
    if call.id in ROUNDED:
        np.testing.assert_allclose(results[0], results[1], rtol=4 * np.finfo(np.float32).eps)
    else:
        np.testing.assert_array_equal(results[0], results[1])
