"""The command line: ``python -m arrayloss``."""

import subprocess
import sys

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
    assert f"not installed: {name}" in capsys.readouterr().err
