"""Imports point one way (docs/architecture.md): every import of the project's own packages,
lazy ones inside functions included, read from the source."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("server", "model", "streaming", "clients")
# What each package may import of the others. The server reaches engines through the seam only
# (model.engines builds one by name), and the plain data the seam exchanges.
ALLOWED: dict[str, tuple[str, ...]] = {
    "server": (
        "streaming",
        "model.engines.api",
        "model.engines",  # the registry: build_engine, ENGINES (not model.engines.<engine>)
        "model.checkpoint",
        "model.format",
        "model.sampling",
        "model.barge_in",
    ),
    "model": ("streaming",),
    "streaming": (),
    "clients": ("streaming", "model.training", "model.format", "model.checkpoint"),
}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] in PACKAGES]


def _allowed(package: str, name: str) -> bool:
    if name.split(".")[0] == package:
        return True
    for prefix in ALLOWED[package]:
        if prefix == "model.engines":  # the registry module itself, not an engine under it
            if name.removeprefix("model.engines.") in ("build_engine", "ENGINES"):
                return True
            continue
        if name == prefix or name.startswith(prefix + "."):
            return True
    return False


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_point_one_way(package: str) -> None:
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for line, name in _imports(path)
        if not _allowed(package, name)
    ]
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_a_wrong_import(tmp_path: Path) -> None:
    """The rule is not vacuous: a server module importing the client library, or the torch
    engine directly, is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "def f():\n    from clients.call import run\n"
        "from model.engines.torch.engine import TorchEngine\nimport model.engines\n"
    )
    names = [name for _, name in _imports(bad)]
    assert names == ["model.engines.torch.engine.TorchEngine", "model.engines", "clients.call.run"]
    assert [n for n in names if not _allowed("server", n)] == [
        "model.engines.torch.engine.TorchEngine",
        "model.engines",
        "clients.call.run",
    ]
