"""The shape of the code: no module reaches into another's private names, and
no two modules import each other, however indirectly (the layers themselves
are import-linter's contracts in pyproject.toml, checked by ``.ci/run``)."""

from __future__ import annotations

import ast
import pathlib
import sys

import grimp

SOURCE = pathlib.Path(__file__).resolve().parent.parent / "src" / "tidings"


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def private_uses(path: pathlib.Path) -> list[str]:
    """Where ``path`` imports a private name of another tidings module, or reads one off it."""
    tree = ast.parse(path.read_text(), str(path))
    own = module_name(path)
    found = []
    modules: dict[str, str] = {}  # local name -> tidings module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tidings"):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__") and node.module != own:
                    found.append(f"{path.name}:{node.lineno} imports {node.module}.{alias.name}")
                modules[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("tidings"):
                    modules[alias.asname or alias.name.split(".")[0]] = alias.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            found.append(f"{path.name}:{node.lineno} reads {modules[node.value.id]}.{node.attr}")
    return found


def test_no_module_uses_a_private_name_of_another():
    found = [use for path in sorted(SOURCE.rglob("*.py")) for use in private_uses(path)]
    assert found == []


def test_the_check_sees_a_private_import(tmp_path, monkeypatch):
    module = tmp_path / "tidings" / "sample.py"
    module.parent.mkdir()
    module.write_text("from tidings.platform.dispatcher import _Job\nimport tidings.store as store\nstore._x\n")
    monkeypatch.setattr(sys.modules[__name__], "SOURCE", tmp_path / "tidings")
    assert private_uses(module) == ["sample.py:1 imports tidings.platform.dispatcher._Job",
                                    "sample.py:3 reads tidings.store._x"]


def test_no_import_cycle():
    graph = grimp.build_graph("tidings")
    cycles = sorted(
        f"{importer} <-> {imported}"
        for importer in graph.modules
        for imported in graph.find_modules_directly_imported_by(importer)
        if importer < imported or not graph.direct_import_exists(importer=imported, imported=importer)
        if graph.chain_exists(importer=imported, imported=importer)
    )
    assert cycles == []
