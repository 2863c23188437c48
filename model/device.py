"""The torch device a command asks for, checked before any work starts.

Without the check, asking for a GPU that is not there (a CPU-only torch, a machine without
one, `cuda:3` on a one-GPU host) fails deep inside a model load with torch's own assertion;
with it, `duplex serve` and `duplex train` say so in one line.
"""

from __future__ import annotations

import torch


def torch_device(name: str) -> torch.device:
    """`name` ('cpu', 'cuda', 'cuda:N') as a device this process can use, or ValueError."""
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"device {name!r}: {exc}") from exc
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ValueError(f"device {name!r}: expected 'cpu' or 'cuda[:N]'")
    if not torch.cuda.is_available():
        raise ValueError(
            f"device {name!r}: no CUDA GPU is usable here (torch {torch.__version__}); "
            "use --device cpu"
        )
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ValueError(f"device {name!r}: this machine has {count} CUDA device(s)")
    return device
