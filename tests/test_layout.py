"""The package's shape (issue 11): layers that import one way, short modules, short functions.

Read by parsing the source (no imports), so these run in a second. Every ``import`` counts,
also the ones inside functions: a lazy import is still a dependency.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "icmlib"

#: icmlib's layers, lowest first. A module may import its own layer and the layers below it,
#: never one above (data flows one way: image -> codec -> task -> metrics -> results).
LAYERS = [
    ("presets", "metrics"),            # plain configuration and metric functions
    ("cache", "shipped"),              # train-or-load: the cache and the shipped checkpoints
    ("engine",),                       # the one training loop, its state and its reporter
    ("codec",),                        # the codec, rANS, the .icm container
    ("data",),                         # the world, COCO-format datasets, downloads
    ("segmentation",),                 # the segmentation background (layers, models, training)
    ("tasks",),                        # task networks and the frozen task
    ("training",),                     # training codecs: recipes, weighting, the codec step
    ("evaluation",),                   # anchors, evaluation, BD-rate, results, reproduction
    ("cli", "widgets", "cost", "ship", "book", "listing"),   # what readers and maintainers run
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}

MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 100


def modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def unit(path: Path) -> str:
    """The layer name of a module file: its subpackage, or its own name at the top."""
    rel = path.relative_to(PACKAGE).with_suffix("")
    return rel.parts[0] if rel.parts[0] != "__init__" else "__init__"


def imported_units(path: Path) -> set:
    tree = ast.parse(path.read_text(), filename=str(path))
    package = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                base = list(package[:len(package) - node.level + 1])
                names = [".".join(base + ([node.module] if node.module else []))]
                if not node.module:
                    names = [f"{names[0]}.{a.name}" for a in node.names]
            else:
                names = [node.module or ""]
                if node.module == "icmlib":
                    names = [f"icmlib.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "icmlib" and len(parts) > 1:
                found.add(parts[1])
    return found


def test_every_module_has_a_layer():
    unknown = {unit(p) for p in modules()} - set(RANK) - {"__init__"}
    assert not unknown, f"give these a layer in LAYERS: {sorted(unknown)}"


def test_imports_go_one_way():
    upward = []
    for path in modules():
        own = unit(path)
        if own == "__init__":
            continue
        for other in imported_units(path) - {own, "__version__"}:
            if other in RANK and RANK[other] > RANK[own]:
                upward.append(f"{path.relative_to(PACKAGE.parent)} imports icmlib.{other} "
                              f"(layer {RANK[other]} above its own {RANK[own]})")
    assert not upward, "\n".join(upward)


def test_modules_are_short():
    long = [f"{p.relative_to(PACKAGE.parent)}: {n} lines" for p in modules()
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    assert not long, f"modules over {MAX_MODULE_LINES} lines:\n" + "\n".join(long)


def test_functions_are_short():
    long = []
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}: {n} lines")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)


@pytest.mark.parametrize("source, expected", [
    ("from icmlib.codec import model\n", {"codec"}),
    ("from .. import cache\n", {"cache"}),
    ("def f():\n    from icmlib.evaluation.reproduce import x\n", {"evaluation"}),
    ("import icmlib.data.world as w\n", {"data"}),
    ("from icmlib import presets, metrics\n", {"presets", "metrics"}),
])
def test_the_import_reader(tmp_path, source, expected):
    """The checker itself sees absolute, relative and lazy imports (else it could not fail)."""
    sub = tmp_path / "icmlib" / "training"
    sub.mkdir(parents=True)
    (sub / "m.py").write_text(source)
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path / "icmlib"
    try:
        assert imported_units(sub / "m.py") == expected
    finally:
        PACKAGE = saved
