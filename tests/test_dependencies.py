"""What the install relies on (streaming/dependencies.py): the pins of the packages whose
internals we use, with one warning line for another version, and the `tools` extra, which
the server never imports and whose absence a tool reports in one line."""

from __future__ import annotations

import ast
import logging
import re
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from server.uvicorn_server import UVICORN_TESTED, check_uvicorn_version
from streaming.codecs.codec2_units import PYCODEC2_TESTED, check_pycodec2_version
from streaming.dependencies import TOOLS_EXTRA, TOOLS_PACKAGES

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# The only modules that may import a tools-only package (the measurement tools, training's plots).
TOOLS_MODULES = ("clients/measure/", "model/training/train.py")


@pytest.mark.parametrize(
    ("check", "name", "tested"),
    [
        (check_uvicorn_version, "uvicorn", UVICORN_TESTED),
        (check_pycodec2_version, "pycodec2", PYCODEC2_TESTED),
    ],
)
def test_another_version_is_named_in_one_warning_line(
    check: Callable[[str | None], str | None],
    name: str,
    tested: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="duplex.dependencies")
    assert check(None) is None  # the installed one is the tested one: silence
    assert check(tested) is None
    assert not caplog.records
    line = check("99.0.0")
    assert [r.getMessage() for r in caplog.records] == [line]
    assert caplog.records[0].levelno == logging.WARNING
    assert line is not None and "\n" not in line
    assert f"{name} 99.0.0 is installed" in line
    assert f"pip install '{name}=={tested}'" in line


def test_pyproject_pins_the_versions_the_checks_expect() -> None:
    deps = PROJECT["dependencies"]
    assert f"uvicorn[standard]=={UVICORN_TESTED}" in deps
    assert f"pycodec2=={PYCODEC2_TESTED}" in deps


def _names(requirements: list[str]) -> set[str]:
    return {m.group() for req in requirements if (m := re.match(r"[\w.-]+", req))}


def test_the_tools_extra_holds_the_tools_packages_and_dev_installs_it() -> None:
    extras = PROJECT["optional-dependencies"]
    assert _names(extras[TOOLS_EXTRA]) == set(TOOLS_PACKAGES.values())
    assert not _names(PROJECT["dependencies"]) & set(TOOLS_PACKAGES.values())
    assert f"duplex[{TOOLS_EXTRA}]" in extras["dev"]


def _tools_imports(path: Path) -> list[str]:
    """Imports of tools-only packages in one file, lazy ones inside functions included."""
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append(node.module)
    return [name for name in found if name.split(".")[0] in TOOLS_PACKAGES]


def test_only_the_tools_import_tools_packages() -> None:
    """The serving install (and the Docker image) lacks them: nothing on the server's path,
    `duplex call` included, may import them, not even lazily."""
    found = {
        str(path.relative_to(ROOT)): names
        for package in ("server", "model", "streaming", "clients")
        for path in sorted((ROOT / package).rglob("*.py"))
        if (names := _tools_imports(path))
    }
    wrong = [f"{path} imports {names}" for path, names in found.items()]
    wrong = [w for w in wrong if not w.startswith(TOOLS_MODULES)]
    assert not wrong, "\n".join(wrong)
    # the scan sees what is there (so it can see a wrong one)
    assert "silero_vad" in found["clients/measure/speech_activity.py"]
    assert "matplotlib" in found["model/training/train.py"]


_BLOCK = "import sys; sys.modules[{module!r}] = None  # as if not installed\n"


@pytest.mark.parametrize(
    ("module", "code"),
    [
        (  # before the load test runs, not after it
            "silero_vad",
            "from clients.measure.loadtest import main\n"
            "sys.exit(main(['--url', 'ws://127.0.0.1:9/v1/duplex', '--quiet']))\n",
        ),
        (  # `duplex eval` and `duplex selfplay` find speech through it
            "silero_vad",
            "import numpy as np\nfrom clients.measure.speech_activity import speech_segments\n"
            "speech_segments([np.zeros(8000, np.float32)], 8000)\n",
        ),
        (  # `duplex train` writes loss.png at each save
            "matplotlib",
            "from pathlib import Path\nfrom model.training.train import plot_losses\n"
            "plot_losses(Path('.'))\n",
        ),
    ],
)
def test_a_tool_without_the_extra_fails_with_one_line_naming_it(
    module: str, code: str, tmp_path: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _BLOCK.format(module=module) + code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [
        f"duplex: error: {TOOLS_PACKAGES[module]} is not installed; it comes with the "
        f"'{TOOLS_EXTRA}' extra: pip install 'duplex[{TOOLS_EXTRA}]'"
    ]
