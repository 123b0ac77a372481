"""docs/errors.md lists exactly the bad inputs that the conformance suite runs (conformance/bad_inputs.py)."""

import importlib.util
import sys
from pathlib import Path

BAD_INPUTS = Path(__file__).resolve().parent.parent / "conformance" / "bad_inputs.py"


def load_bad_inputs():
    name = "conformance_bad_inputs"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, BAD_INPUTS)
        sys.modules[name] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def test_errors_doc_table_is_generated_from_the_cases():
    bad_inputs = load_bad_inputs()
    document = bad_inputs.DOC.read_text()
    assert bad_inputs.table_in(document) == bad_inputs.markdown_table(), (
        "docs/errors.md is out of date: run .venv/bin/python conformance/bad_inputs.py"
    )


def test_errors_doc_has_a_row_per_case():
    bad_inputs = load_bad_inputs()
    rows = bad_inputs.table_in(bad_inputs.DOC.read_text()).splitlines()[2:]
    assert len(rows) == len(bad_inputs.CASES)
    for row, case in zip(rows, bad_inputs.CASES, strict=True):
        assert f"`{case.error.__name__}`" in row and case.what in row
