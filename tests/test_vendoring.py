"""Vendoring: arrayloss copied into a host package uses the host's copy of array_api_compat.

Each test builds ``host/_vendor/{arrayloss, array_api_compat, _array_api_compat_vendor.py}``
in a temporary directory (the layout docs/vendoring.md describes) and imports the
vendored arrayloss in a fresh interpreter in which a top-level ``array_api_compat``
cannot be imported, as if it were not installed.
"""

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import array_api_compat
import pytest

import arrayloss

COMPAT_NAMES = (
    "array_namespace, device, is_array_api_obj, is_numpy_array, is_numpy_namespace, "
    "is_torch_array, is_torch_namespace"
)

# Prepended to every script: the installed array_api_compat cannot be imported.
BLOCK_INSTALLED_COMPAT = """\
import sys

class BlockArrayApiCompat:
    def find_spec(self, name, path=None, target=None):
        if name == "array_api_compat":
            raise ModuleNotFoundError("No module named 'array_api_compat' (blocked)", name=name)
        return None

sys.meta_path.insert(0, BlockArrayApiCompat())
"""


@pytest.fixture
def host(tmp_path):
    """``tmp_path`` holding the host package; returns its ``_vendor`` directory."""
    vendor = tmp_path / "host" / "_vendor"
    vendor.mkdir(parents=True)
    (tmp_path / "host" / "__init__.py").write_text("")
    (vendor / "__init__.py").write_text("")
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(Path(arrayloss.__file__).parent, vendor / "arrayloss", ignore=ignore)
    shutil.copytree(Path(array_api_compat.__file__).parent, vendor / "array_api_compat", ignore=ignore)
    (vendor / "_array_api_compat_vendor.py").write_text(
        f"from .array_api_compat import *  # noqa\nfrom .array_api_compat import {COMPAT_NAMES}\n"
    )
    return vendor


def run_blocked(root, script):
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONNOUSERSITE": "1"}
    return subprocess.run(
        [sys.executable, "-c", BLOCK_INSTALLED_COMPAT + script],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )


def test_vendored_arrayloss_uses_the_vendored_array_api_compat(host, tmp_path):
    script = """
import numpy as np
import host._vendor.arrayloss as al
loss = al.sparse_softmax_cross_entropy(np.asarray([[2.0, 0.5, -1.0]]), np.asarray([0]))
print(float(loss[0]), "array_api_compat" in sys.modules, "host._vendor.array_api_compat" in sys.modules)
"""
    result = run_blocked(tmp_path, script)
    assert result.returncode == 0, result.stderr
    value, top_level_imported, vendored_imported = result.stdout.split()
    assert float(value) == pytest.approx(0.2413113, abs=1e-6)  # -log softmax([2, .5, -1])[0]
    assert top_level_imported == "False"
    assert vendored_imported == "True"


def test_without_the_vendor_module_the_import_fails(host, tmp_path):
    # Proves the test above used the vendored copy: without the re-exporting module,
    # arrayloss falls back to the (blocked) top-level array_api_compat.
    (host / "_array_api_compat_vendor.py").unlink()
    result = run_blocked(tmp_path, "import host._vendor.arrayloss\n")
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith(("ImportError", "ModuleNotFoundError")), result.stderr
    assert "array_api_compat" in last_line


def test_vendored_and_installed_copies_register_their_own_torch_operators(host, tmp_path):
    # ctc_loss's torch operators are registered in a namespace named after the module that
    # defines them: a vendored copy beside the installed arrayloss in one process does not collide.
    pytest.importorskip("torch")
    script = """
import torch
import arrayloss as installed
import host._vendor.arrayloss as vendored
logits, labels = torch.zeros(1, 2, 3), torch.tensor([[1]])
print(float(installed.ctc_loss(logits, labels)[0]), float(vendored.ctc_loss(logits, labels)[0]))
print(hasattr(torch.ops.arrayloss__lib__torch, "ctc_losses"))
print(hasattr(torch.ops.host__vendor_arrayloss__lib__torch, "ctc_losses"))
"""
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "PYTHONNOUSERSITE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    values, installed_registered, vendored_registered = result.stdout.split("\n")[:3]
    expected = -math.log(3 / 9)  # the paths "1 1", "0 1" and "1 0", of probability 1/9 each
    assert [float(v) for v in values.split()] == pytest.approx([expected, expected], rel=1e-6)
    assert installed_registered == vendored_registered == "True"
