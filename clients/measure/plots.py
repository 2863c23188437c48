"""What the measurement tools' plots share: matplotlib on its file-only backend, and the
empirical CDF they draw their latencies with (`duplex loadtest`, `duplex eval`)."""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np

from streaming.dependencies import require_tools


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the Agg backend (no display needed); matplotlib is in the `tools`
    extra, so a missing one is said plainly."""
    require_tools("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_ecdf(ax: Any, values: Sequence[float], **style: Any) -> None:
    """The empirical CDF of `values` as steps, from 0 at the smallest (nothing for none)."""
    xs = sorted(values)
    if xs:
        ax.step([xs[0], *xs], [0.0, *(np.arange(1, len(xs) + 1) / len(xs))], where="post", **style)
