"""The package's imports point one way, low to high, and no package takes another's private names.

Layers (low to high): ``_atomic``, ``_problems``, ``_version`` < ``data``, ``metrics`` < ``models``,
``annotate`` < ``inference`` < ``engine`` < the API face (``api``), ``cli``, ``gui``. Every import of
``blastscope.*`` in every module, at the top or inside a function, is read with ``ast``; importing a
higher layer, a same-or-higher sibling at the same level (``data`` -> ``metrics``), or a private
module or name (``_name``) of another package fails, with the file and line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import blastscope

PACKAGE = Path(blastscope.__file__).parent
LAYERS = {
    "_atomic": 0, "_problems": 0, "_version": 0,
    "data": 1, "metrics": 1,
    "models": 2, "annotate": 2,
    "inference": 3,
    "engine": 4,
    "api": 5, "cli": 6, "gui": 6,
    "__main__": 7,  # python -m blastscope: starts the cli
}  # fmt: skip
#: the one sideways import: the ``blastscope gui`` command starts the app (lazily, inside ``run``)
ALLOWED = {("cli", "gui")}


def _imports(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("blastscope"):
                    yield node.lineno, a.name, []
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("blastscope"):
            yield node.lineno, node.module, [a.name for a in node.names]


def _violations() -> list[str]:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.name == "__init__.py" and len(rel.parts) == 1:
            continue  # the package face re-exports the API
        own = rel.parts[0].removesuffix(".py")
        assert own in LAYERS, f"{rel}: a new top-level module or package; give it a layer in tests/test_layers.py"
        for line, module, names in _imports(path):
            parts = module.split(".")
            if len(parts) == 1:
                bad.append(f"{rel}:{line}: imports the package face 'blastscope' (import from its modules)")
                continue
            target = parts[1]
            if target == own or (own, target) in ALLOWED:
                continue
            if LAYERS[target] > LAYERS[own] or (LAYERS[target] == LAYERS[own] and LAYERS[own] > 0):
                bad.append(f"{rel}:{line}: {own} (layer {LAYERS[own]}) imports {module} (layer {LAYERS[target]})")
            private = [p for p in parts[2:] if p.startswith("_")] + [n for n in names if n.startswith("_") and n != "__version__"]
            if private:
                bad.append(f"{rel}:{line}: takes private {private} of {module}")
    return bad


def test_imports_follow_the_layer_order():
    bad = _violations()
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_the_check_catches_an_upward_import(tmp_path, monkeypatch):
    """The rule itself fails on a data module that imports the engine (so the test above can fail)."""
    fake = tmp_path / "blastscope"
    (fake / "data").mkdir(parents=True)
    (fake / "data" / "bad.py").write_text("def f():\n    from blastscope.engine.trainer import train\n")
    (fake / "data" / "worse.py").write_text("from blastscope.models._darknet import x\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    bad = _violations()
    assert any("data/bad.py:2" in b and "engine" in b for b in bad)
    assert any("data/worse.py:1" in b and "private" in b for b in bad)


@pytest.mark.parametrize("module", ["blastscope.data.transforms", "blastscope.metrics.calls"])
def test_low_layers_import_alone(module):
    import importlib

    importlib.import_module(module)
