"""No global mutable state in arrayloss: what a call does depends only on its arguments.

A module may hold a mutable container (a constant table, or a registry filled while
the package is imported), but no function may write to it unless that function is
only ever called at import time (from a module's top level). And no ``global``
statement anywhere. ``conformance/test_integrity.py`` checks the same at run time:
calls on every backend leave every module's globals unchanged.
"""

import ast
from pathlib import Path

import arrayloss

SOURCES = sorted(Path(arrayloss.__file__).parent.rglob("*.py"))
CONTAINER_CALLS = {"list", "dict", "set", "bytearray", "defaultdict", "OrderedDict", "deque", "Counter"}
CONTAINER_LITERALS = (ast.List, ast.Dict, ast.Set, ast.ListComp, ast.DictComp, ast.SetComp)
MUTATING_METHODS = {
    "append", "extend", "insert", "remove", "pop", "popitem", "clear", "update", "setdefault",
    "add", "discard", "sort", "reverse", "appendleft", "popleft", "extendleft",
}  # fmt: skip
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


def parse(source):
    """The syntax tree of ``source``, each node knowing its ``parent``."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            child.parent = node
    return tree


def enclosing_function(node):
    while (node := getattr(node, "parent", None)) is not None:
        if isinstance(node, FUNCTIONS):
            return node
    return None


def module_containers(tree):
    """Names bound at module level to a new mutable container (``__all__`` aside)."""
    names = set()
    for statement in tree.body:
        if isinstance(statement, ast.Assign):
            targets, value = statement.targets, statement.value
        elif isinstance(statement, ast.AnnAssign) and statement.value is not None:
            targets, value = [statement.target], statement.value
        else:
            continue
        is_call = isinstance(value, ast.Call) and ast.unparse(value.func).split(".")[-1] in CONTAINER_CALLS
        if isinstance(value, CONTAINER_LITERALS) or is_call:
            names |= {t.id for t in targets if isinstance(t, ast.Name) and t.id != "__all__"}
    return names


def written_name(node):
    """The name of the container ``node`` writes to (``x[k] = v``, ``del x[k]``, ``x.append(v)``), or None."""
    if isinstance(node, ast.Subscript) and isinstance(node.ctx, (ast.Store, ast.Del)):
        target = node.value
    elif (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in MUTATING_METHODS
    ):
        target = node.func.value
    else:
        return None
    return target.id if isinstance(target, ast.Name) else None


def runtime_writes(trees):
    """Calls, inside functions, of functions that write a module-level container of their module.

    ``trees`` maps file names to trees from :func:`parse`. A writer called only from
    module top level (a registration at import time) is fine, as is a container never written.
    """
    writers = {}  # function name -> where it writes a module-level container
    for file, tree in trees.items():
        containers = module_containers(tree)
        for node in ast.walk(tree):
            name = written_name(node)
            function = enclosing_function(node)
            if name in containers and function is not None:
                writers[getattr(function, "name", "<lambda>")] = f"{file}:{node.lineno} writes {name}"
    return [
        f"{file}:{node.lineno} calls {callee} ({writers[callee]})"
        for file, tree in trees.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and (callee := ast.unparse(node.func).split(".")[-1]) in writers
        and enclosing_function(node) is not None
    ] + [f"a lambda {where}" for name, where in writers.items() if name == "<lambda>"]


def test_no_global_statements():
    found = [
        f"{path.name}:{node.lineno}"
        for path in SOURCES
        for node in ast.walk(parse(path.read_text()))
        if isinstance(node, ast.Global)
    ]
    assert not found, f"global statements: {found}"


def test_module_containers_are_only_written_at_import_time():
    trees = {path.name: parse(path.read_text()) for path in SOURCES}
    found = runtime_writes(trees)
    assert not found, f"module-level containers written after import: {found}"


def test_the_scan_catches_a_cache_filled_by_calls():
    cache = parse("CACHE = {}\ndef fill(k):\n    CACHE[k] = 1\ndef loss(x):\n    fill(x)\n")
    registry = parse("RULES = []\ndef register(r):\n    RULES.append(r)\nregister(1)\n")
    assert runtime_writes({"cache.py": cache}) == ["cache.py:5 calls fill (cache.py:3 writes CACHE)"]
    assert runtime_writes({"registry.py": registry}) == []
