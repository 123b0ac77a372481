"""The command line: ``python -m arrayloss``."""

import subprocess
import sys
from importlib import metadata

import pytest

from arrayloss import _cli


def run(*args):
    return subprocess.run([sys.executable, "-m", "arrayloss", *args], capture_output=True, text=True)


def test_seed_on_numpy_agrees_and_exits_zero():
    result = run("--backend", "numpy")
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("numpy")]
    assert len(rows) == 4  # float64 and float32, list and stacked forms
    assert all(row.endswith("ok") for row in rows)
    assert "[0.98991765, 1.05560169]" in rows[0]
    assert result.stdout.splitlines()[-1] == (
        "Every run agrees with TensorFlow's numbers within the tolerance."
    )


def test_output_says_what_the_seed_is_and_what_ok_means():
    result = run("--backend", "numpy")
    intro = result.stdout.split("\n\n")[0]
    assert "TensorFlow's documented example of sequence_loss_by_example" in intro
    assert "[0.98991765, 1.05560169]" in intro  # TensorFlow's numbers
    assert "1e-07 in float64, 1e-05 in float32" in intro
    header = next(line for line in result.stdout.splitlines() if line.startswith("backend"))
    assert header.split()[-2:] == ["tolerance", "status"]
    for row in (line for line in result.stdout.splitlines() if line.startswith("numpy")):
        dtype, tolerance = row.split()[2], row.split()[-2]
        assert float(tolerance) == _cli.TOLERANCE[dtype]


def test_ok_is_decided_by_each_dtypes_tolerance(monkeypatch, capsys):
    """Reference numbers off by 3e-6: beyond float64's tolerance (1e-7), within float32's (1e-5)."""
    monkeypatch.setattr(_cli, "SEED_EXPECTED", [v + 3e-6 for v in _cli.SEED_EXPECTED])
    assert _cli.main(["--backend", "numpy"]) == 1
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("numpy")]
    assert {row.split()[2]: row.split()[-1] for row in rows} == {"float64": "MISMATCH", "float32": "ok"}


def test_unknown_backend_is_a_usage_error():
    result = run("--backend", "tensorflow")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def test_disagreement_gives_nonzero_exit(monkeypatch, capsys):
    monkeypatch.setattr(_cli, "SEED_EXPECTED", [0.9, 1.05560169])
    assert _cli.main(["--backend", "numpy"]) == 1
    assert "MISMATCH" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(_cli.BACKENDS))
def test_missing_backend_requested_explicitly_is_an_error(name, monkeypatch, capsys):
    monkeypatch.setattr(_cli, "installed", lambda backend: backend != name)
    with pytest.raises(SystemExit) as exit_info:
        _cli.main(["--backend", name])
    assert exit_info.value.code == 2
    assert f"not installed: {name} ({_cli.INSTALL[name]})" in capsys.readouterr().err


def test_missing_backend_row_gives_the_install_command(monkeypatch, capsys):
    monkeypatch.setattr(_cli, "installed", lambda backend: backend == "numpy")
    assert _cli.main([]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if "not installed" in line}
    assert set(rows) == set(_cli.BACKENDS) - {"numpy"}
    assert rows["torch"].endswith('not installed: pip install "arrayloss[torch]"')
    assert rows["jax"].endswith('not installed: pip install "arrayloss[jax]"')


def test_install_commands_name_extras_that_exist():
    """Each ``arrayloss[extra]`` the command line suggests is an extra of the package's metadata."""
    extras = set(metadata.metadata("arrayloss").get_all("Provides-Extra") or [])
    suggested = {cmd.split("[")[1].split("]")[0] for cmd in _cli.INSTALL.values() if "arrayloss[" in cmd}
    assert suggested == {"torch", "jax", "dask", "cupy"}
    assert suggested <= extras
