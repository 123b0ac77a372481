"""The conformance suite's command line and its ``backend`` fixture.

``pytest conformance --backend=MODULE --device=NAME`` runs every test on the arrays of
one library and device. The backend is named by the module that provides its arrays
(``numpy``, ``array_api_strict``, ``torch``, ``jax``, ``dask``, ``cupy``); ``--device``
is ``default`` or a device name of that library (``cpu``, ``cuda``, ``device1``...).
Tests build inputs in NumPy float64, hand them to the backend with
:meth:`Backend.asarray`, and compare results with a float64 reference after
:meth:`Backend.to_numpy`.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import array_api_compat
import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from arrayloss._lib._settings import settings as arrayloss_settings

# Scripts that the distributed tests run in their own processes (they import torch or JAX at the top):
# not test modules, and not collected for doctests on backends without those libraries.
collect_ignore_glob = ["*_worker.py"]

settings.register_profile(
    "ci",
    max_examples=60,
    deadline=None,
    # The autouse torch_path fixture is function-scoped but the same for every example.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,
)
settings.register_profile(
    "fuzz",
    max_examples=2000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Relative tolerance of a result against the float64 reference, by the dtype it was computed in.
RTOL = {"float64": 1e-10, "float32": 2e-5, "float16": 2e-3, "bfloat16": 1.6e-2}
ATOL = {"float64": 1e-12, "float32": 2e-6, "float16": 2e-3, "bfloat16": 1.6e-2}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("arrayloss conformance")
    group.addoption("--backend", default="numpy", help="module providing the arrays (numpy, torch, ...)")
    group.addoption("--device", default="default", help="device name of that library, or 'default'")


@dataclass
class Backend:
    """One array library on one device, as the tests see it."""

    name: str
    module: ModuleType  # what users call: numpy, torch, jax.numpy, dask.array, ...
    xp: ModuleType  # the array API namespace arrayloss infers for those arrays
    device: Any
    eager: bool  # values are checked eagerly (labels in range, weights valid)
    float_dtypes: list[str] = field(default_factory=list)
    int_dtypes: list[str] = field(default_factory=list)

    def dtype(self, name: str) -> Any:
        if name == "bfloat16":
            return self.module.bfloat16
        return getattr(self.xp, name) if hasattr(self.xp, name) else np.dtype(name)  # Dask: NumPy dtypes

    def asarray(self, values: Any, dtype: str | None = None) -> Any:
        """``values`` (NumPy or nested lists) as an array of this backend, on its device."""
        a = np.asarray(values)
        if dtype is None:
            dtype = "float64" if a.dtype.kind == "f" else "int64" if a.dtype.kind in "iu" else "bool"
        if dtype in ("float16", "bfloat16"):  # through float32: not every library converts from NumPy
            return self.xp.astype(self.asarray(a, "float32"), self.dtype(dtype))
        a = a.astype(dtype)
        if self.name == "dask":
            chunks = tuple(max(1, (n + 1) // 2) if i == 0 else n for i, n in enumerate(a.shape))
            return self.module.from_array(a, chunks=chunks)
        if self.name == "torch":
            return self.module.asarray(a.copy(), device=self.device)
        return self.xp.asarray(a, device=self.device)

    def to_numpy(self, x: Any) -> np.ndarray:
        """A float64 (or integer/bool) NumPy copy of ``x``, computed if lazy."""
        if self.name == "dask":
            x = x.compute()
        if self.name == "torch":
            x = x.detach().cpu()
            if x.is_floating_point():
                x = x.double()
            return x.numpy()
        if self.name == "cupy":
            x = x.get()
        if self.name == "ndonnx":  # eager ndonnx arrays hold their NumPy values
            x = x.unwrap_numpy()
        if self.name == "array_api_strict":
            cpu = self.module.Device("CPU_DEVICE")
            x = self.xp.asarray(x.to_device(cpu), copy=True)
        if self.name == "jax" and str(x.dtype) == "bfloat16":
            x = x.astype("float32")
        a = np.asarray(x)
        return a.astype(np.float64) if a.dtype.kind == "f" else a

    def check_result(self, out: Any, *, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
        """Assert ``out`` is an array of this backend, on its device, with ``dtype`` and ``shape``.

        Returns its float64 NumPy copy for comparing values.
        """
        assert array_api_compat.is_array_api_obj(out), f"result is a {type(out).__name__}"
        assert not isinstance(out, np.generic), f"result is a NumPy scalar: {type(out).__name__}"
        assert array_api_compat.array_namespace(out) is self.xp, f"result namespace of {type(out)}"
        assert array_api_compat.device(out) == self.device, (
            f"result on {array_api_compat.device(out)!r}, inputs on {self.device!r}"
        )
        assert out.dtype == self.dtype(dtype), f"result dtype {out.dtype}, expected {dtype}"
        assert tuple(out.shape) == tuple(shape), f"result shape {tuple(out.shape)}, expected {shape}"
        return self.to_numpy(out)

    def assert_close(self, out: Any, expected: Any, *, dtype: str, scale: float = 1.0) -> None:
        """``check_result`` with the shape of ``expected``, then compare values at ``dtype``'s tolerance."""
        expected = np.asarray(expected, dtype=np.float64)
        got = self.check_result(out, dtype=dtype, shape=expected.shape)
        np.testing.assert_allclose(got, expected, rtol=RTOL[dtype] * scale, atol=ATOL[dtype] * scale)


def _make_backend(name: str, device_name: str) -> Backend:
    if name == "array_api_strict":
        strict = importlib.import_module("array_api_strict")
        # The strictest flags: no boolean indexing, no data-dependent output shapes.
        strict.set_array_api_strict_flags(boolean_indexing=False, data_dependent_shapes=False)
        module = strict
    elif name == "jax":
        jax = importlib.import_module("jax")
        jax.config.update("jax_enable_x64", True)
        module = importlib.import_module("jax.numpy")
    elif name == "dask":
        module = importlib.import_module("dask.array")
    elif name == "ndonnx":
        _sessions_of_one_thread(importlib.import_module("onnxruntime"))
        module = importlib.import_module(name)
    else:
        module = importlib.import_module(name)

    probe = module.asarray([0.0]) if name != "torch" else module.zeros(1)
    xp = array_api_compat.array_namespace(probe)
    info = xp.__array_namespace_info__()
    if device_name == "default":
        device = info.default_device()
    elif name == "array_api_strict":
        device = module.Device(device_name)
    elif name == "torch":
        device = module.device(device_name)
    elif name == "jax":
        device = importlib.import_module("jax").devices(device_name)[0]
    else:
        raise pytest.UsageError(f"unknown device {device_name!r} for backend {name!r}")
    if device is None:  # dask's namespace info reports no default device
        device = array_api_compat.device(probe)
    if name == "torch" and device.type == "cuda" and not module.cuda.is_available():
        raise pytest.UsageError("--device=cuda but torch sees no CUDA device")

    dtypes = info.dtypes(device=device, kind=None)  # ndonnx requires the keyword
    floats = [d for d in ("float32", "float64") if d in dtypes]
    # Half precision is not in the standard, so namespace info never lists it: every library
    # but array-api-strict has float16.
    if name != "array_api_strict":
        floats.insert(0, "float16")
    if hasattr(module, "bfloat16") or name == "jax":
        floats.insert(1, "bfloat16")
    ints = [d for d in ("int8", "int16", "int32", "int64", "uint8") if d in dtypes]
    eager = name in ("numpy", "array_api_strict") or (name == "torch" and device.type == "cpu")
    return Backend(name, module, xp, device, eager, floats, ints)


def _sessions_of_one_thread(ort: ModuleType) -> None:
    """ONNX Runtime sessions of one thread in this process. ndonnx runs each eager operation in a
    session of its own, which would start a thread pool of one thread per CPU for a few microseconds
    of work, beside the other pytest workers' pools: with one thread, 0.45 ms an operation instead of
    0.62 (``ndx.exp(x) + x`` on 8 x 5), and the ndonnx suite on two workers took 72 s instead of
    204 s (2-core machine). The results are the same; only the sessions' thread pools change."""

    class OneThread(ort.SessionOptions):
        def __init__(self) -> None:
            super().__init__()
            self.intra_op_num_threads = 1
            self.inter_op_num_threads = 1

    ort.SessionOptions = OneThread


@pytest.fixture(scope="session")
def backend(request: pytest.FixtureRequest) -> Backend:
    return _make_backend(request.config.getoption("--backend"), request.config.getoption("--device"))


# Backends whose every array operation is a separate runtime call (ndonnx: an ONNX model run each), where
# every combination of a test's parameters would cost many minutes in all: they run each value once.
ONE_CALL_PER_OPERATION = {"ndonnx"}


def repeated(value: Any) -> Any:
    """``value`` as a parameter whose path another parameter of the same test runs too (blocks of one
    row beside blocks of 3, float32 beside float64, a reduction of the same losses): deselected on
    :data:`ONE_CALL_PER_OPERATION`'s backends, where each repeat costs seconds of runtime calls."""
    return pytest.param(value, marks=pytest.mark.repeated_path)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "backend(*names): a test of these backends only, deselected (not skipped) on the others"
    )
    config.addinivalue_line(
        "markers",
        f"repeated_path: a parameter whose path another runs too; not on {sorted(ONE_CALL_PER_OPERATION)}",
    )


def _runs_on(item: pytest.Item, backend: str) -> bool:
    marker = item.get_closest_marker("backend")
    if marker is not None and backend not in marker.args:
        return False
    return not (backend in ONE_CALL_PER_OPERATION and item.get_closest_marker("repeated_path"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the tests that are not this backend's (not skipped ones of this run), and on
    :data:`ONE_CALL_PER_OPERATION`'s backends the combinations of parameters that
    :func:`each_value_once` leaves out."""
    backend = config.getoption("--backend")
    kept = [item for item in items if _runs_on(item, backend)]
    if backend in ONE_CALL_PER_OPERATION:
        kept = each_value_once(kept)
    if len(kept) < len(items):
        chosen = set(map(id, kept))
        config.hook.pytest_deselected(items=[item for item in items if id(item) not in chosen])
        items[:] = kept


def each_value_once(items: list[pytest.Item]) -> list[pytest.Item]:
    """Of each test function's parametrized items, a subset in which every value of every parameter
    occurs at least once (a greedy cover, in the order of collection), not every combination: each
    option's path runs, and the combinations run on the other backends."""
    groups: dict[tuple[str, str], list[pytest.Item]] = {}
    for item in items:
        groups.setdefault((str(item.path), getattr(item, "originalname", item.name)), []).append(item)
    chosen: set[int] = set()
    for group in groups.values():
        needs = [_values(item) for item in group]
        missing = set().union(*needs)
        while True:
            best = max(range(len(group)), key=lambda i: len(needs[i] & missing))
            chosen.add(id(group[best]))
            missing -= needs[best]
            if not missing:
                break
    return [item for item in items if id(item) in chosen]


def _values(item: pytest.Item) -> set[tuple[str, str]]:
    """The (parameter, its value's ``repr``) pairs of a parametrized item; none for another."""
    callspec = getattr(item, "callspec", None)
    return {(name, repr(value)) for name, value in callspec.params.items()} if callspec else set()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """On torch, run every test twice: small plain calls delegated to PyTorch, and never delegated.

    Tests of the autodiff paths (the ``path`` fixture of ``test_autodiff``) run on the array-API
    path only: they check which backward arrayloss itself attaches.
    """
    torch = metafunc.config.getoption("--backend") == "torch"
    chooses_path = "path" in metafunc.fixturenames  # test_autodiff's own paths
    if torch and "torch_path" in metafunc.fixturenames and not chooses_path:
        metafunc.parametrize("torch_path", ["delegated", "array-api"], indirect=True)


@pytest.fixture(autouse=True)
def torch_path(request: pytest.FixtureRequest) -> Iterator[str]:
    """Which path small plain torch calls take (see ``arrayloss._lib._torch``); ``default``: unchanged."""
    path = getattr(request, "param", "default")
    changes = {} if path == "default" else {"delegate_to_torch": path == "delegated"}
    with arrayloss_settings(**changes):
        yield str(path)


@pytest.fixture
def configure() -> Iterator[Callable[..., object]]:
    """``configure(block_bytes=1, ...)``: arrayloss's scoped settings changed for the rest of the test."""
    with contextlib.ExitStack() as stack:
        yield lambda **changes: stack.enter_context(arrayloss_settings(**changes))
