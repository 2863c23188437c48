"""What the install relies on, checked where it is used: the version of each package whose
internals we use (pinned in pyproject.toml), and the optional `tools` extra that only the
measurement tools (clients/measure) and training's plots need; `duplex serve` does without it.
"""

from __future__ import annotations

import logging
from importlib.metadata import version
from importlib.util import find_spec

log = logging.getLogger("duplex.dependencies")

TOOLS_EXTRA = "tools"
# The `tools` extra of pyproject.toml, by import name -> the name pip installs it by.
TOOLS_PACKAGES = {"silero_vad": "silero-vad", "matplotlib": "matplotlib"}


def untested_version(
    distribution: str, tested: str, relies_on: str, installed: str | None = None
) -> str | None:
    """Log one warning line when `distribution` is not the version we tested (and pin), and
    return it (None when it is). A warning, not a refusal: pip installs the pinned version, so
    another one is an operator's deliberate choice (a security release, say) that may well
    work; the line says what may break and how to go back. `relies_on` names what we use."""
    installed = version(distribution) if installed is None else installed
    if installed == tested:
        return None
    line = (
        f"{distribution} {installed} is installed but duplex is tested with {tested} only "
        f"({relies_on}); if it misbehaves: pip install '{distribution}=={tested}'"
    )
    log.warning("%s", line)
    return line


def require_tools(module: str) -> None:
    """Exit with one line that names the extra to install, not an ImportError traceback, when
    `module` (a key of TOOLS_PACKAGES) is missing. SystemExit: the tools and `duplex train`
    each catch their own error types, and this one reaches the top from any of them."""
    if find_spec(module) is None:
        raise SystemExit(
            f"duplex: error: {TOOLS_PACKAGES[module]} is not installed; it comes with the "
            f"'{TOOLS_EXTRA}' extra: pip install 'duplex[{TOOLS_EXTRA}]'"
        )
