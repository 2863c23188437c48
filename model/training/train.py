"""`duplex train`: a Llama decoder learns the interleaved chunk format (issue 4 part 3).

Both speakers' tokens are targets: the engine estimates the user's next chunk with the same
model that speaks for the agent, so the user's units must be learnt as well as the agent's.

Data: the dialogues of `train.npz` are shuffled per epoch (seeded), concatenated and cut into
windows of `context` tokens. Every dialogue starts with its own [BOS], so the model sees where
one conversation ends and learns to start afresh; packing wastes no compute on padding (a
dialogue is ~200 tokens, a window 512) and only the last window of an epoch is padded. The
batch of step s depends only on (seed, s), so a resumed run sees exactly the batches an
uninterrupted one would.

Held-out loss is measured per dialogue from its own [BOS] (no other dialogue as context) and
split by what the target token is: an agent unit, a user unit or a tag ([S0], [S1], [BOS]).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import LlamaForCausalLM

from model.checkpoint import DuplexConfig, new_llama, read_config, write_config
from model.device import torch_device
from model.format import ChunkFormat
from model.training.synth import load_split
from streaming.codecs import absolute_spec

STATE = "train_state.pt"
METRICS = "metrics.jsonl"
PLOT = "loss.png"
KINDS = ("agent", "user", "tags")  # what a target token is: agent unit, user unit, tag
_IGNORE = -100


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Model shape, data windows, optimizer schedule and budget of one training run."""

    layers: int = 4
    hidden: int = 256
    heads: int = 4
    kv_heads: int = 1  # multi-query attention: the batched server reads KV once per tick
    intermediate: int = 768
    context: int = 512  # tokens per training window
    batch_tokens: int = 8192  # a multiple of context
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    steps: int = 1000  # the schedule's length
    minutes: float | None = None  # wall-clock cap per invocation; --resume carries on
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"  # compute dtype (bfloat16 autocast on a GPU)
    save_dtype: str = "float32"  # dtype of the served weights
    eval_every: int = 100
    checkpoint_every: int = 200
    serve_sink: int = 64

    def __post_init__(self) -> None:
        if self.batch_tokens % self.context:
            raise ValueError(f"batch_tokens {self.batch_tokens} is no multiple of {self.context}")
        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise ValueError("hidden must divide by heads and heads by kv_heads")
        if self.steps < 1 or self.eval_every < 1 or self.checkpoint_every < 1:
            raise ValueError("steps, eval_every and checkpoint_every must be >= 1")

    @property
    def serve_context(self) -> int:
        """KV capacity when served: the training window, so that no query ever attends over a
        distance the model has not been trained on (the sink is re-rotated into the window)."""
        return self.context


PRESETS: dict[str, TrainConfig] = {
    # The served shape of docs/benchmarks.md (3.5 M parameters, 14 MB in float32). 1500 steps
    # of 4096 tokens = 6.1 M tokens (~85 epochs of the full synth corpus): 39-43 min at the
    # 2400-2650 tokens/s measured on this machine's 2 shared cores (docs/training.md); the
    # clock cap keeps a slower machine within the hour, and --resume finishes a capped run.
    "cpu-default": TrainConfig(
        batch_tokens=4096,
        steps=1500,
        warmup_steps=50,
        minutes=58,
        eval_every=100,
        checkpoint_every=100,
    ),
    # 12 x 768 (about 74 M parameters, 150 MB in bfloat16) for a CUDA GPU; serves with the
    # design's 2048-token context.
    "gpu": TrainConfig(
        layers=12,
        hidden=768,
        heads=12,
        kv_heads=1,
        intermediate=2048,
        context=2048,
        batch_tokens=32768,
        lr=3e-4,
        warmup_steps=200,
        steps=4000,
        device="cuda",
        dtype="bfloat16",
        save_dtype="bfloat16",
        eval_every=200,
        checkpoint_every=500,
    ),
}

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(slots=True)
class Windows:
    """Training windows: inputs [n, context], targets [n, context] (-100 = padding) and the
    kind of each target (index into KINDS)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    kinds: torch.Tensor


def token_kinds(tokens: np.ndarray, fmt: ChunkFormat) -> np.ndarray:
    """0 for an agent unit, 1 for a user unit, 2 for a tag: units (of every codebook) belong
    to the last tag."""
    is_tag = (tokens == fmt.s0) | (tokens == fmt.s1) | (tokens == fmt.bos)
    speaker = np.where(tokens == fmt.s1, 1, 0)
    last_tag = np.maximum.accumulate(np.where(is_tag, np.arange(len(tokens)), 0))
    return np.where(is_tag, 2, speaker[last_tag]).astype(np.int64)


def cut_windows(tokens: np.ndarray, fmt: ChunkFormat, context: int) -> Windows:
    """Consecutive windows of `context` targets (each token a target once); the last padded."""
    n = max(1, math.ceil((len(tokens) - 1) / context))
    padded = np.full(n * context + 1, -1, dtype=np.int64)
    padded[: len(tokens)] = tokens
    kinds = np.zeros_like(padded)
    kinds[: len(tokens)] = token_kinds(tokens, fmt)
    inputs = np.where(padded[:-1] < 0, fmt.bos, padded[:-1]).reshape(n, context)
    targets = np.where(padded[1:] < 0, _IGNORE, padded[1:]).reshape(n, context)
    return Windows(
        torch.from_numpy(inputs),
        torch.from_numpy(targets),
        torch.from_numpy(kinds[1:].reshape(n, context)),
    )


class TrainBatches:
    """The batch of step s: windows [s*B, (s+1)*B) of an endless run of seeded epochs."""

    def __init__(self, dialogues: list[np.ndarray], fmt: ChunkFormat, cfg: TrainConfig) -> None:
        self.dialogues, self.fmt, self.cfg = dialogues, fmt, cfg
        self.per_batch = cfg.batch_tokens // cfg.context
        total = sum(len(d) for d in dialogues)
        self.per_epoch = max(1, math.ceil((total - 1) / cfg.context))
        self._epoch: tuple[int, Windows] | None = None

    def _windows(self, epoch: int) -> Windows:
        if self._epoch is None or self._epoch[0] != epoch:
            order = np.random.default_rng([self.cfg.seed, epoch]).permutation(len(self.dialogues))
            stream = np.concatenate([self.dialogues[i] for i in order])
            self._epoch = (epoch, cut_windows(stream, self.fmt, self.cfg.context))
        return self._epoch[1]

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [
            divmod(j, self.per_epoch)
            for j in range(step * self.per_batch, (step + 1) * self.per_batch)
        ]
        picked = [(self._windows(e).inputs[i], self._windows(e).targets[i]) for e, i in rows]
        return torch.stack([p[0] for p in picked]), torch.stack([p[1] for p in picked])


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warmup, then cosine decay to lr * min_lr_ratio at cfg.steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    done = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.lr * (
        cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * done))
    )


def build_model(cfg: TrainConfig, duplex: DuplexConfig) -> LlamaForCausalLM:
    return new_llama(
        duplex,
        seed=cfg.seed,
        layers=cfg.layers,
        hidden=cfg.hidden,
        heads=cfg.heads,
        kv_heads=cfg.kv_heads,
        intermediate=cfg.intermediate,
        max_positions=max(cfg.context, cfg.serve_context),
    )


def _token_losses(
    model: LlamaForCausalLM, inputs: torch.Tensor, targets: torch.Tensor, cfg: TrainConfig
) -> torch.Tensor:
    """Cross-entropy per target token [B, T] (0 at padding)."""
    with torch.autocast(
        device_type=torch.device(cfg.device).type,
        dtype=_DTYPES[cfg.dtype],
        enabled=cfg.dtype != "float32",
    ):
        logits = model(input_ids=inputs).logits
    flat = F.cross_entropy(
        logits.float().flatten(0, 1), targets.flatten(), ignore_index=_IGNORE, reduction="none"
    )
    return flat.view_as(targets)


@torch.no_grad()
def evaluate(model: LlamaForCausalLM, held: Windows, cfg: TrainConfig) -> dict[str, float]:
    """Mean held-out loss (nats per token), overall and per kind of target."""
    model.eval()
    sums = torch.zeros(len(KINDS), dtype=torch.float64)
    counts = torch.zeros(len(KINDS), dtype=torch.float64)
    per_batch = cfg.batch_tokens // cfg.context
    dev = torch.device(cfg.device)
    for a in range(0, len(held.inputs), per_batch):
        targets = held.targets[a : a + per_batch]
        losses = _token_losses(
            model, held.inputs[a : a + per_batch].to(dev), targets.to(dev), cfg
        ).cpu()
        real = targets != _IGNORE
        kinds = held.kinds[a : a + per_batch]
        for k in range(len(KINDS)):
            mask = real & (kinds == k)
            sums[k] += losses[mask].double().sum()
            counts[k] += mask.sum()
    model.train()
    out = {"heldout_loss": float(sums.sum() / counts.sum().clamp(min=1))}
    for k, name in enumerate(KINDS):
        out[f"heldout_{name}"] = float(sums[k] / counts[k]) if counts[k] else float("nan")
    return out


def heldout_windows(dialogues: list[np.ndarray], fmt: ChunkFormat, context: int) -> Windows:
    """Each held-out dialogue from its own [BOS], cut into windows of its own."""
    parts = [cut_windows(d, fmt, context) for d in dialogues]
    return Windows(
        *(torch.cat([getattr(p, f) for p in parts]) for f in ("inputs", "targets", "kinds"))
    )


def load_data(
    data: Path, checkpoint: Path
) -> tuple[DuplexConfig, list[np.ndarray], list[np.ndarray]]:
    """The duplex.json the data was written with (checked against synth.json), its codec's
    paths made absolute (the trained model is written elsewhere), and both splits."""
    for name in ("train.npz", "heldout.npz", "synth.json"):
        if not (data / name).is_file():
            raise FileNotFoundError(f"{data} holds no {name}: run `duplex data synth --out {data}`")
    duplex = read_config(checkpoint)
    duplex = duplex.model_copy(update={"codec": absolute_spec(duplex.codec, checkpoint)})
    written = json.loads((data / "synth.json").read_text())["chunk_format"]
    written.setdefault("silence_frame", None)  # data written before it was a field: the default
    if written != json.loads(json.dumps(asdict(duplex.chunk_format()))):  # tuples as lists
        raise ValueError(
            f"{data} was written in another chunk format than {checkpoint}'s duplex.json"
        )
    train = load_split(data / "train.npz")[1]
    held = load_split(data / "heldout.npz")[1]
    if not train or not held:
        raise ValueError(f"{data} needs dialogues in both splits")
    return duplex, train, held


def _save_weights(
    model: LlamaForCausalLM,
    out: Path,
    cfg: TrainConfig,
    duplex: DuplexConfig,
    step: int,
    data: Path,
) -> None:
    dtype = _DTYPES[cfg.save_dtype]
    state = {k: v.detach().to("cpu", dtype) for k, v in model.state_dict().items()}
    model.save_pretrained(out, state_dict=state)
    described = duplex.model_copy(
        update={
            "context_tokens": cfg.serve_context,
            "sink_tokens": min(cfg.serve_sink, cfg.serve_context // 2),
            "description": (
                f"duplex train: {cfg.layers}x{cfg.hidden} Llama, {step} of {cfg.steps} steps of "
                f"{cfg.batch_tokens} tokens (windows of {cfg.context}, seed {cfg.seed}) on "
                f"{data.name}, both speakers as targets; weights in {cfg.save_dtype}"
            ),
        }
    )
    write_config(out, described)


def plot_losses(out: Path) -> None:
    """loss.png from metrics.jsonl: training loss and held-out loss (overall and per kind)."""
    from streaming.dependencies import require_tools

    require_tools("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in (out / METRICS).read_text().splitlines()]
    fig, ax = plt.subplots(figsize=(7, 4))
    train = [r for r in rows if "train_loss" in r]
    ax.plot([r["step"] for r in train], [r["train_loss"] for r in train], label="train")
    for key, style in (("heldout_loss", "-"), *((f"heldout_{k}", ":") for k in KINDS)):
        ax.plot(
            [r["step"] for r in rows], [r[key] for r in rows], style, label=key.replace("_", " ")
        )
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / PLOT, dpi=100)
    plt.close(fig)


def _metrics(out: Path, upto: int) -> dict[str, Any]:
    """Drop metric lines after `upto` (written after the state a resume starts from); return
    the last one kept."""
    path = out / METRICS
    rows = path.read_text().splitlines() if path.is_file() else []
    kept = [r for r in rows if json.loads(r)["step"] <= upto]
    path.write_text("".join(f"{r}\n" for r in kept))
    return json.loads(kept[-1]) if kept else {}


def _identity(cfg: TrainConfig) -> dict[str, Any]:
    """What a resumed run must share with the run it continues: all but the clock cap and the
    device (the saved state loads onto any)."""
    return asdict(replace(cfg, minutes=None, device=""))


def train(
    cfg: TrainConfig,
    data: Path,
    out: Path,
    *,
    checkpoint: Path = Path("models/default"),
    resume: bool = False,
    until: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train (or resume) into `out`, a servable checkpoint; returns the last metrics record.

    `until` stops after that step with the state saved, as an interruption would.
    """
    dev = torch_device(cfg.device)
    duplex, train_dialogues, held_dialogues = load_data(data, checkpoint)
    fmt = duplex.chunk_format()
    model = build_model(cfg, duplex).to(dev)  # type: ignore[arg-type]  # transformers' .to
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )
    step = 0
    record: dict[str, Any] = {}
    out.mkdir(parents=True, exist_ok=True)
    if resume:
        if not (out / STATE).is_file():
            raise FileNotFoundError(f"nothing to resume: {out / STATE} is missing")
        state = torch.load(out / STATE, map_location="cpu", weights_only=False)  # any device
        if state["config"] != _identity(cfg):
            raise ValueError(
                f"{out / STATE} was written with another configuration: {state['config']}"
            )
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step = state["step"]
        torch.set_rng_state(state["rng"])
        record = _metrics(out, step)
    else:
        (out / METRICS).unlink(missing_ok=True)
    batches = TrainBatches(train_dialogues, fmt, cfg)
    held = heldout_windows(held_dialogues, fmt, cfg.context)
    stop = min(cfg.steps, until if until is not None else cfg.steps)
    deadline = time.monotonic() + cfg.minutes * 60 if cfg.minutes else math.inf

    def save() -> None:
        state = {
            "config": _identity(cfg),
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "step": step,
            "rng": torch.get_rng_state(),
        }
        torch.save(state, out / STATE)
        _save_weights(model, out, cfg, duplex, step, data)
        if (out / METRICS).is_file():
            plot_losses(out)

    def log(train_loss: float | None, tok_s: float) -> dict[str, Any]:
        rec: dict[str, Any] = {
            "step": step,
            "tokens": step * cfg.batch_tokens,
            "lr": lr_at(cfg, step),
        }
        if train_loss is not None:
            rec |= {"train_loss": train_loss, "tok_s": round(tok_s, 1)}
        rec |= evaluate(model, held, cfg)
        with (out / METRICS).open("a") as f:
            f.write(json.dumps(rec) + "\n")
        return rec

    if step == 0:
        record = log(None, 0.0)
    model.train()
    bar = tqdm(total=stop, initial=step, desc="train", unit="step", disable=not progress)
    window_loss, window_tokens, window_s = 0.0, 0, 0.0  # since the last log; time in steps only
    with bar:
        while step < stop and time.monotonic() < deadline:
            started = time.perf_counter()
            inputs, targets = batches.batch(step)
            for group in opt.param_groups:
                group["lr"] = lr_at(cfg, step)
            losses = _token_losses(model, inputs.to(dev), targets.to(dev), cfg)
            n = int((targets != _IGNORE).sum())
            loss = losses.sum() / n
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            step += 1
            window_loss += float(loss.detach()) * n
            window_tokens += n
            window_s += time.perf_counter() - started
            tok_s = window_tokens / window_s
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", tok_s=f"{tok_s:.0f}", refresh=False)
            bar.update()
            if step % cfg.eval_every == 0 or step == stop:
                record = log(window_loss / window_tokens, tok_s)
                if progress:
                    bar.write(describe(record))
                window_loss, window_tokens, window_s = 0.0, 0, 0.0
            if step % cfg.checkpoint_every == 0:
                save()
    if window_tokens:  # stopped by the clock between evaluations
        record = log(window_loss / window_tokens, window_tokens / window_s)
    save()
    return record


def describe(record: dict[str, Any]) -> str:
    """One line of `key=value` for a metrics record."""
    return " ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()
    )
