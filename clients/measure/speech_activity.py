"""Where each stream holds speech: silero-vad (its model ships in the package), offline.

The load test, the evaluation and self-play all measure turns from these segments, so their
figures are comparable with each other and with the training data's.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from streaming.dependencies import require_tools
from streaming.resample import resample_whole

# silero-vad runs at 8 kHz on 256-sample (32 ms) windows; every wire rate is a multiple of it.
VAD_RATE = 8000
VAD_WINDOW = 256

Segment = tuple[float, float]  # (start, end) in seconds


def speech_segments(streams: Sequence[np.ndarray], rate: int) -> list[list[Segment]]:
    """silero-vad speech segments (seconds) of each stream at `rate`.

    All streams go through the model as one batch, window by window: a batch of 16 costs about
    what one stream does, so the analysis stays short at any caller count.
    """
    if not streams:
        return []
    x = [resample_whole(np.asarray(s, dtype=np.float32), rate, VAD_RATE) for s in streams]
    windows = max(1, max(-(-len(s) // VAD_WINDOW) for s in x))
    batch = np.zeros((len(x), windows * VAD_WINDOW), dtype=np.float32)
    for row, s in zip(batch, x, strict=True):
        row[: len(s)] = s
    require_tools("silero_vad")
    import torch

    threads = torch.get_num_threads()  # importing silero_vad sets 1 thread process-wide
    try:
        from silero_vad import get_speech_timestamps_from_probs, load_silero_vad

        torch.set_num_threads(1)  # one small step per window: threads only add overhead
        with warnings.catch_warnings():
            # silero-vad ships a TorchScript model; torch 2.13 deprecates loading those.
            warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", DeprecationWarning)
            model = load_silero_vad()
        model.reset_states()
        tensor = torch.from_numpy(batch)
        with torch.inference_mode():
            probs = torch.cat(
                [
                    model(tensor[:, w * VAD_WINDOW : (w + 1) * VAD_WINDOW], VAD_RATE)
                    for w in range(windows)
                ],
                dim=1,
            ).numpy()
    finally:
        torch.set_num_threads(threads)
    out: list[list[Segment]] = []
    for p, s in zip(probs, x, strict=True):
        segs = get_speech_timestamps_from_probs(
            p[: -(-len(s) // VAD_WINDOW)].tolist(),
            sampling_rate=VAD_RATE,
            speech_pad_ms=0,  # padding would shift ends later and onsets earlier
            audio_length_samples=len(s),
        )
        out.append([(g["start"] / VAD_RATE, g["end"] / VAD_RATE) for g in segs])
    return out


def vad_name() -> str:
    from importlib.metadata import version

    return f"silero-vad {version('silero-vad')}"
