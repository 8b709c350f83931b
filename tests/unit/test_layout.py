"""The package's layering, checked from the source: no module uses another module's private names.

A leading underscore means "this module's own"; a name another module needs is part of an interface
and is spelled without one (within a package, kept out of embedkit.__all__ when users need not see it).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

# namedtuple methods: public API, underscored only to stay clear of field names
NAMEDTUPLE_API = frozenset({"_replace", "_asdict", "_fields", "_make"})
REPO = Path(__file__).resolve().parents[2]
PACKAGES = {
    "embedkit": REPO / "embedkit",
    "langchain_embedkit": REPO / "integrations" / "langchain" / "langchain_embedkit",
}


def _module_name(root: Path, package: str, path: Path) -> str:
    parts = [package, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> list[tuple[str, Path]]:
    return [
        (_module_name(root, package, path), path)
        for package, root in PACKAGES.items()
        for path in sorted(root.rglob("*.py"))
    ]


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _own_attributes(tree: ast.Module) -> set[str]:
    """Attributes this module's classes define: `self._x = ...`, `def _x`, class-level `_x: ...`."""
    own = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            own.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            own.add(node.attr)
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    own.add(item.target.id)
                elif isinstance(item, ast.Assign):
                    own.update(target.id for target in item.targets if isinstance(target, ast.Name))
    return own


def _crossings(module: str, path: Path) -> list[str]:
    """`from other import _x`, `import other._x` and `other._x` where `other` is another first-party module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    first_party = tuple(f"{package}" for package in PACKAGES)
    aliases: dict[str, str] = {}  # local name -> the first-party module it names
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith(first_party):
            source = node.module or ""
            for alias in node.names:
                if source != module and _private(alias.name):
                    found.append(f"{path.name}:{node.lineno}: from {source} import {alias.name}")
                aliases[alias.asname or alias.name] = f"{source}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(first_party):
                    if any(_private(part) for part in alias.name.split(".")[1:]):
                        found.append(f"{path.name}:{node.lineno}: import {alias.name}")
                    top = alias.name.split(".")[0]
                    aliases[alias.asname or top] = alias.name if alias.asname else top
    own = _own_attributes(tree)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not _private(node.attr) or node.attr in NAMEDTUPLE_API:
            continue
        if node.attr in own and not (isinstance(node.value, ast.Name) and node.value.id in aliases):
            continue  # this module's own class reading its own state on another instance (`twin._info`)
        if isinstance(node.value, ast.Name):
            target = aliases.get(node.value.id)
            if target is not None and target != module:
                found.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}")
            elif target is None and node.value.id not in ("self", "cls"):
                # another object's private state (`client._settings()`): its class owes an interface
                found.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}")
        else:
            found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    return found


@pytest.mark.parametrize(("module", "path"), _sources(), ids=[name for name, _ in _sources()])
def test_no_private_names_cross_modules(module: str, path: Path) -> None:
    assert _crossings(module, path) == []


def test_the_old_flat_modules_are_gone() -> None:
    # replaced by the embedkit.local, embedkit.remote and embedkit.ingestion packages
    for old in ("runtime.py", "remote.py", "ingest.py", "distributed.py", "sources.py"):
        assert not (REPO / "embedkit" / old).exists(), old
