"""The engines the server can run, by name (`duplex serve --engine NAME`).

Adding an engine is one module that implements `model.engines.api.Engine` and has a factory
`(checkpoint, options) -> Engine`, plus one line in `ENGINES`. Modules are imported only when
their engine is built, so an engine's own dependencies (vLLM, ...) are needed only by those who
choose it.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import cast

from model.engines.api import Engine, EngineFactory, EngineOptions

# name -> "module:factory"
ENGINES: dict[str, str] = {
    "torch": "model.engines.torch.engine:load_engine",
    "vllm": "model.engines.vllm.engine:load_engine",
}


def build_engine(name: str, checkpoint: Path, options: EngineOptions) -> Engine:
    """Load `checkpoint` into the engine registered as `name`."""
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; known engines: {sorted(ENGINES)}")
    module, factory = ENGINES[name].split(":")
    return cast(EngineFactory, getattr(import_module(module), factory))(checkpoint, options)
