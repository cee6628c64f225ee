"""Rules of the code base that no linter here checks: no module reaches into another's `_private` names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("backend", "explorer", "bench")


def private_uses(path: Path) -> list[str]:
    """`from m import _x` and `m._x` (m an imported module or name) in one file, as 'line: text'."""
    tree = ast.parse(path.read_text(), filename=str(path))
    imported: set[str] = set()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for a in node.names:
                imported.add(a.asname or a.name)
                if a.name.startswith("_") and not a.name.startswith("__"):
                    found.append(f"{node.lineno}: from {node.module} import {a.name}")
        elif isinstance(node, ast.Import):
            imported.update((a.asname or a.name).split(".")[0] for a in node.names)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name) and node.value.id in imported):
            found.append(f"{node.lineno}: {node.value.id}.{node.attr}")
    return found


def test_the_rule_catches_both_forms(tmp_path):
    p = tmp_path / "m.py"
    p.write_text("from backend.store.query import _cursor\nfrom backend.store import query as q\n"
                 "class A:\n    def f(self):\n        return self._x, q._df, q.query_df\n")
    assert private_uses(p) == ["1: from backend.store.query import _cursor", "5: q._df"]


@pytest.mark.parametrize("package", PACKAGES)
def test_no_private_names_across_modules(package):
    files = [p for p in sorted((REPO / package).rglob("*.py"))
             if not any(part.startswith(".") for part in p.relative_to(REPO).parts)]  # not bench/.venv-*
    bad = {str(p.relative_to(REPO)): u for p in files if (u := private_uses(p))}
    assert not bad, f"private names used across modules (make them public and document them): {bad}"


def backend_imports(path: Path) -> set[str]:
    """Dotted names a file imports from `backend` (at any depth of the file): `from backend.a import b` gives
    backend.a.b, whether b is a module or a name in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "backend":
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "backend")
    return found


def test_explorer_reaches_the_backend_only_through_data():
    """Pages, the frame and the label editor call explorer.data (cached reads, plain writes); UserError is the
    one backend name they may import."""
    files = [p for p in sorted((REPO / "explorer").rglob("*.py")) if p.name != "data.py"]
    bad = {str(p.relative_to(REPO)): sorted(m) for p in files
           if (m := backend_imports(p) - {"backend.common.errors.UserError"})}
    assert not bad, bad
    assert "backend.store.query" in backend_imports(REPO / "explorer" / "data.py")  # the rule reads real imports
