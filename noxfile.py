"""The backend x device test matrix.

``nox`` runs every CPU session (lint, typecheck, the package tests, the documentation
site and the conformance suite on each CPU backend); ``nox -t gpu`` runs the GPU sessions,
which skip with a message when no GPU is present. ``nox -s "conformance(torch-cpu)"``
runs one session; ``nox -s fuzz`` runs the long property-based profile and
``nox -s bench`` the benchmarks.
"""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_venv = "yes"  # a second `nox` reuses the environments: only changed requirements install
nox.options.error_on_missing_interpreters = True
nox.options.tags = ["cpu"]  # plain `nox`: every CPU session; GPU sessions need `-t gpu`

CONSTRAINTS = ("-c", "constraints-cpu.txt")
RUFF = "ruff==0.17.6"  # pinned: a new release must not fail `lint` without a change here
MYPY = "mypy==2.4.1"
TEST_TOOLS = (".[test]",)  # pytest-xdist among them: the CPU sessions run one pytest worker per CPU
# Tests handed to idle workers as they finish: a few long ones (hypothesis properties, chunk_size=1 on
# ndonnx) would otherwise leave one worker busy at the end.
PARALLEL = ("-n", "auto", "--dist", "worksteal")
# The documentation site's tools, pinned like ruff and mypy; Read the Docs installs the same file.
DOC_TOOLS = ("-r", "docs/requirements.txt")

# (id, backend module, --device value, extra requirements, tags)
MATRIX = [
    ("numpy", "numpy", "default", (), ["cpu"]),
    ("array_api_strict", "array_api_strict", "default", (), ["cpu"]),
    ("array_api_strict-device1", "array_api_strict", "device1", (), ["cpu"]),
    ("torch-cpu", "torch", "cpu", ("torch",), ["cpu"]),
    ("jax-cpu", "jax", "cpu", ("jax", "optax"), ["cpu"]),
    # distributed: test_dask_blocks.py computes on a LocalCluster with a memory limit per worker.
    ("dask", "dask", "default", ("dask[array]", "distributed"), ["cpu"]),
    # ONNX-backed arrays, eager here; test_unknown_shapes.py also builds lazy graphs of unknown batch size.
    ("ndonnx", "ndonnx", "default", ("ndonnx", "onnxruntime"), ["cpu"]),
    ("torch-cuda", "torch", "cuda", ("torch",), ["gpu"]),
    ("cupy", "cupy", "default", ("cupy-cuda12x",), ["gpu"]),
]


def has_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None


def run_pytest(session: nox.Session, *args: str) -> None:
    """Run pytest and fail the session if no test actually ran (all skipped or none collected)."""
    report = Path(session.create_tmp()) / "junit.xml"
    # -rs: the reasons of the skipped tests, counted, in the summary
    session.run("pytest", "-rs", f"--junitxml={report}", *args, *session.posargs)
    suite = ET.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    ran = int(suite.get("tests", 0)) - int(suite.get("skipped", 0))
    if ran <= 0:
        session.error("no test ran in this session")


@nox.session
@nox.parametrize(
    "backend,device,extra",
    [nox.param(b, d, e, id=i, tags=t) for i, b, d, e, t in MATRIX],
)
def conformance(session: nox.Session, backend: str, device: str, extra: tuple[str, ...]) -> None:
    """The behavioural suite on one backend and device."""
    if device == "cuda" or backend == "cupy":
        if not has_gpu():
            session.skip(f"{backend} on {device} needs an NVIDIA GPU (nvidia-smi not found)")
        session.install(*TEST_TOOLS, *extra)
        parallel: tuple[str, ...] = ()  # one process on the GPU
    else:
        session.install(*CONSTRAINTS, *TEST_TOOLS, *extra)
        parallel = PARALLEL
    session.env.update(compilation_caches(session))
    run_pytest(session, *parallel, "conformance", f"--backend={backend}", f"--device={device}")


def compilation_caches(session: nox.Session) -> dict[str, str]:
    """JAX's and PyTorch Inductor's caches of compiled programs, in nox's cache folder (``.nox/.cache``):
    a second run compiles only what changed (JAX's CTC and property tests: 72 s with an empty cache, 30 s
    with a full one), and a fresh clone starts from empty ones. JAX's cache has no size cap, whose
    least-recently-used bookkeeping (with ``filelock``) made a first run three times slower:
    ``rm -r .nox/.cache`` empties them."""
    cache = Path(session.cache_dir)
    return {
        "JAX_COMPILATION_CACHE_DIR": str(cache / "jax"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",  # every program, however quick to compile
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1",
        "TORCHINDUCTOR_CACHE_DIR": str(cache / "torchinductor"),  # not one shared by all of /tmp
    }


@nox.session(tags=["cpu"])
def tests(session: nox.Session) -> None:
    """Package-level tests, doctests of the sources and of the README."""
    session.install(*CONSTRAINTS, *TEST_TOOLS, "torch", MYPY)  # mypy: tests/test_typing.py
    # loadfile: a test module's tests in one worker, so that its module fixtures (the benchmark smoke run,
    # the mypy run) run once
    run_pytest(session, "-n", "auto", "--dist", "loadfile", "tests", "README.md", "--pyargs", "arrayloss")


@nox.session(tags=["cpu"])
def docs(session: nox.Session) -> None:
    """The documentation site (docs/), built with warnings as errors, and the examples of its pages.

    The site lands in .nox/docs/tmp/html. The docstrings' examples and the README's are run by ``tests``.
    """
    session.install(*CONSTRAINTS, ".", *DOC_TOOLS, "pytest")
    html = Path(session.create_tmp()) / "html"
    shutil.rmtree(html, ignore_errors=True)  # a full build: Sphinx repeats no warning of an unchanged page
    session.run("sphinx-build", "-W", "--keep-going", "-q", "-b", "html", "docs", str(html))
    run_pytest(session, "docs", "--doctest-glob=*.md")
    session.log(f"documentation site: {html / 'index.html'}")


@nox.session
def fuzz(session: nox.Session) -> None:
    """The long property-based profile on NumPy and torch CPU (thousands of examples)."""
    session.install(*CONSTRAINTS, *TEST_TOOLS, "torch")
    for backend in ("numpy", "torch"):
        run_pytest(session, "conformance", f"--backend={backend}", "--hypothesis-profile=fuzz")


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmark suite (pass options after --, e.g. ``nox -s bench -- --smoke``)."""
    session.install(*CONSTRAINTS, ".", "torch", "scipy")
    session.run("python", "benchmarks/bench.py", *session.posargs)


@nox.session(tags=["cpu"])
def lint(session: nox.Session) -> None:
    session.install(RUFF)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(tags=["cpu"])
def typecheck(session: nox.Session) -> None:
    """mypy --strict on src, with torch installed so that its types are checked too."""
    session.install(*CONSTRAINTS, MYPY, ".", "torch")
    session.run("mypy")
