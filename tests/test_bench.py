"""The benchmark suite's smoke mode: structure of the table and the JSON, never timings."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"


def _load_bench():
    """The script as a module (registered in sys.modules first: its dataclasses look it up there)."""
    spec = importlib.util.spec_from_file_location("arrayloss_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


_bench = _load_bench()

HEADER = ["case", "backend", "size", "dtype", "implementation", "median", "speed-up", "target", "peak MiB"]


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "results.json"
    result = run("--smoke", "--repeat", "1", "--json", str(path))
    assert result.returncode == 0, result.stderr
    return result, json.loads(path.read_text())


def test_smoke_prints_a_table_with_the_columns(smoke):
    result, _ = smoke
    lines = result.stdout.splitlines()
    assert lines[0].split()[:5] == HEADER[:5]
    assert set(lines[1]) == {"-"}
    rows = lines[2:-1]
    assert lines[-1].startswith("load average (1 min) on ")
    assert any(row.startswith("forward ") and " numpy " in row and "arrayloss" in row for row in rows)
    assert any("scipy log_softmax" in row for row in rows) == (importlib.util.find_spec("scipy") is not None)


def test_smoke_says_which_targets_it_did_not_measure(smoke):
    """Targets are set for the full sizes: at smoke sizes no verdict, but for the small case (same sizes)."""
    result, _ = smoke
    rows = result.stdout.splitlines()[2:-1]
    forward = [row for row in rows if row.startswith("forward ") and ">=" in row]
    assert forward and all("not measured at this size" in row for row in forward)
    verdict = re.compile(r">=\S+ (ok|NO)\b")
    assert not any(verdict.search(row) for row in forward)
    small = [row for row in rows if row.startswith("small ") and ">=" in row]
    assert small and all(verdict.search(row) for row in small)
    assert not any("not measured" in row for row in small)


def test_smoke_reports_progress_on_stderr(smoke):
    result, _ = smoke
    progress = [line for line in result.stderr.splitlines() if line.startswith("[")]
    assert progress[0].startswith("[1/")
    total = progress[0].split("/")[1].split("]")[0]
    assert progress[-1].startswith(f"[{total}/{total}]")


def test_smoke_json_has_one_record_per_table_row(smoke):
    result, payload = smoke
    records = payload["results"]
    assert payload["smoke"] is True and payload["repeat"] == 1
    assert {"python", "cpus", "numpy"} <= set(payload["machine"])
    assert len(records) == len(result.stdout.splitlines()) - 3  # header, rule, load average
    assert set(payload["load_average"]) == {"start", "end"}
    for record in records:
        assert record["median_s"] > 0 and len(record["times_s"]) == 1
        assert (record["speedup"] is None) == (record["impl"] == "arrayloss")
        assert record["at_target_size"] == (record["case"] == "small")
    cases = {record["case"] for record in records}
    assert {"forward", "small", "sweep"} <= cases
    numpy_forward = [r for r in records if r["case"] == "forward" and r["backend"] == "numpy"]
    assert numpy_forward[0]["impl"] == "arrayloss"
    assert numpy_forward[-1]["impl"] == "sum"


def test_cases_option_selects_cases(tmp_path):
    path = tmp_path / "small.json"
    result = run("--smoke", "--repeat", "1", "--cases", "small", "--json", str(path))
    assert result.returncode == 0, result.stderr
    assert {r["case"] for r in json.loads(path.read_text())["results"]} == {"small"}


def test_plot_without_matplotlib_is_a_clear_usage_error(tmp_path):
    if importlib.util.find_spec("matplotlib") is not None:
        pytest.skip("matplotlib is installed; the message is for when it is not")
    result = run("--smoke", "--plot", str(tmp_path / "plot.png"))
    assert result.returncode == 2
    assert "--plot needs matplotlib" in result.stderr


def test_bad_repeat_is_a_usage_error():
    result = run("--smoke", "--repeat", "0")
    assert result.returncode == 2
    assert "--repeat must be at least 1" in result.stderr


def test_gpu_case_is_skipped_without_a_gpu():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available() or importlib.util.find_spec("cupy") is not None:
        pytest.skip("a GPU library is present")
    assert list(_bench.gpu_cases(_bench.SMOKE)) == []


def test_table_formats_speedup_target_and_memory():
    row = _bench.Result("forward", "numpy", "8x16", "float32", 16, "sum", [2e-3, 4e-3], 3 * 2**20, 0.5, 1.0)
    line = _bench.format_row(row)
    assert "3.00 ms" in line and "0.50x" in line and ">=1 NO" in line and line.endswith("3")


def test_table_says_not_measured_instead_of_a_verdict_and_stays_aligned():
    args = ("forward", "numpy", "64x500", "float32", 500, "sum", [2e-3], 2**20, 0.5, 1.0)
    measured = _bench.Result(*args)
    smoke = _bench.Result(*args, at_target_size=False)
    assert ">=1 NO" in _bench.format_row(measured)
    cell = ">=1 not measured at this size"
    assert cell in _bench.format_row(smoke) and " NO" not in _bench.format_row(smoke)
    header, _, *lines = _bench.table([measured, smoke]).splitlines()
    peak_column = header.index("peak MiB")
    assert all(line[peak_column:] == "1" for line in lines)


def test_every_case_names_the_sizes_its_targets_depend_on():
    assert set(_bench.CASE_SIZES) == set(_bench.CASES)
    fields = set(_bench.Sizes.__dataclass_fields__)
    assert all(set(names) <= fields for names in _bench.CASE_SIZES.values())
    assert _bench.at_target_size("small", _bench.SMOKE)  # the small case's sizes are the full ones
    assert not _bench.at_target_size("forward", _bench.SMOKE)
    assert all(_bench.at_target_size(case, _bench.FULL) for case in _bench.CASES)
