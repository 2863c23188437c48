"""Every knob of the server: `DUPLEX_*` environment variables and `duplex serve` flags.

One pydantic-settings model is the single source: the command line flags are generated from
its fields (docs/configuration.md lists them), and invalid values are refused at start.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from model.engines import ENGINES
from streaming.wire import (
    MAX_BARGE_IN_MS,
    MAX_NOISE_GATE_DB,
    MAX_SPEAK_UP_MS,
    MAX_START_BIAS,
    MAX_TEMPERATURE,
)

DEFAULT_MODEL = Path("models/default")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DUPLEX_", extra="forbid")

    host: str = Field(default="127.0.0.1", description="address to listen on")
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port (0 = any free)")
    model: Path = Field(default=DEFAULT_MODEL, description="checkpoint directory")
    engine: str = Field(
        default="torch",
        description=f"what runs the model: one of {', '.join(ENGINES)} (model/engines/)",
    )
    device: str = Field(default="cpu", description="torch device: cpu, cuda, cuda:1, ...")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        default="float32", description="weights and KV cache dtype"
    )
    threads: int = Field(default=1, ge=0, description="torch CPU threads (0 = torch default)")
    tensor_parallel_size: int = Field(
        default=1, ge=1, description="GPUs one model is split over (--engine vllm; docs/gpu.md)"
    )
    max_sessions: int = Field(
        default=16,
        ge=1,
        le=4096,
        description="concurrent calls (16: what 2 CPU cores sustain)",
    )
    latency_budget_ms: float = Field(
        default=240.0, ge=0, le=2000, description="user audio may arrive this late"
    )
    lead_ms: float | None = Field(
        default=None,
        ge=1,
        description="a tick's step starts at the latest this long before its deadline "
        "(none: as recent steps needed, at most tick - 35 ms)",
    )
    estimate_units: int = Field(
        default=0,
        ge=0,
        description="most frames the model samples to estimate a user chunk none of which arrived "
        "(0: hold the user's last frame)",
    )
    temperature: float = Field(
        default=0.6, ge=0, le=MAX_TEMPERATURE, description="default sampling temperature"
    )
    turn_temperature: float | None = Field(
        default=0.1,
        ge=0,
        le=MAX_TEMPERATURE,
        description="default temperature of the speak-or-not part of each draw "
        "(none = one flat draw at temperature)",
    )
    speak_up_ms: float = Field(
        default=3000.0,
        ge=0,
        le=MAX_SPEAK_UP_MS,
        description="default: after this long with no sound from either side, the agent "
        "speaks up (0 = never)",
    )
    start_bias: float = Field(
        default=1.2,
        ge=-MAX_START_BIAS,
        le=MAX_START_BIAS,
        description="default: added to the log-odds of the agent starting to speak "
        "(0 = as the model has it; above 0: sooner after the caller's last word)",
    )
    barge_in_ms: float = Field(
        default=120.0,
        ge=0,
        le=MAX_BARGE_IN_MS,
        description="default: a caller who starts talking while the agent talks silences it "
        "after this much speech, until they pause (0 = the model alone decides)",
    )
    noise_gate_db: float = Field(
        default=10.0,
        ge=0,
        le=MAX_NOISE_GATE_DB,
        description="a caller's audio frames less than this far above the line's noise floor "
        "reach the model as silence (0 = no gate)",
    )
    top_k: int = Field(default=250, ge=0, description="default top-k (0 = off)")
    seed: int | None = Field(default=None, ge=0, description="default seed (none = random)")
    max_message_bytes: int = Field(
        default=65536, ge=1024, description="largest WebSocket message accepted"
    )
    start_timeout_s: float = Field(default=10.0, gt=0, description="time to send `start`")
    idle_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="close a native or Twilio call whose client sends nothing this long (a "
        "Realtime session stays open: its missing audio is silence)",
    )
    max_call_s: float = Field(default=3600.0, gt=0, description="maximum call length")
    resume_window_s: float = Field(
        default=30.0,
        ge=0,
        description="a native or Realtime call whose connection drops waits this long to be "
        "resumed with its token, its slot and KV cache kept (0: no resume; the call ends at "
        "the drop)",
    )
    resume_replay_s: float = Field(
        default=10.0,
        ge=0,
        description="agent audio kept per call to send again on resume (from the chunk the "
        "client names)",
    )
    ping_interval_s: float = Field(default=20.0, gt=0, description="WebSocket ping interval")
    send_queue_s: float = Field(
        default=2.0, gt=0, description="cut off a client that falls this far behind reading"
    )
    shutdown_grace_s: float = Field(
        default=5.0, ge=0, description="on SIGTERM, open calls get this long to finish"
    )
    peers: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="the other replicas' base URLs (http://host:port), comma-separated: on "
        "SIGTERM each live native call moves to one with room and its client resumes there "
        "(none = calls end with 1012 after the grace period; docs/deploy.md)",
    )
    replica_name: str = Field(
        default="",
        description="this replica's name for the load balancer: a client told to resume here "
        "reconnects with ?replica=NAME (HAProxy's server name; docs/deploy.md)",
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="accepted API keys, comma-separated (none = no auth); clients send "
        "`Authorization: Bearer KEY` or `?token=KEY`",
    )
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="browser Origins allowed to connect, comma-separated (none = any)",
    )
    prompts_dir: Path | None = Field(
        default=None,
        description="voice prompts calls may open with, one audio file each (NAME.wav or "
        "NAME.flac), listed at GET /v1/prompts (docs/prompts.md)",
    )
    prompt_max_s: float | None = Field(
        default=None,
        gt=0,
        le=30,
        description="longest voice prompt, named or uploaded, in seconds (none: what the "
        "checkpoint's attention sink holds; longer grows the sink and shortens the attention "
        "window by as much)",
    )
    record_dir: Path | None = Field(
        default=None,
        description="record every call (both channels' audio, units, estimates) into this "
        "folder, for debugging",
    )
    ssl_certfile: Path | None = Field(
        default=None,
        description="serve HTTPS/WSS with this PEM certificate (browsers on other hosts need "
        "HTTPS for the microphone); needs --ssl-keyfile",
    )
    ssl_keyfile: Path | None = Field(
        default=None, description="the PEM private key of --ssl-certfile"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="log level"
    )

    @field_validator("api_keys", "allowed_origins", "peers", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("turn_temperature", mode="before")
    @classmethod
    def _none(cls, value: object) -> object:
        """`--turn-temperature none` (or an empty variable): one flat draw."""
        if isinstance(value, str) and value.strip().lower() in ("", "none"):
            return None
        return value

    @field_validator("engine")
    @classmethod
    def _engine(cls, value: str) -> str:
        if value not in ENGINES:
            raise ValueError(f"unknown engine {value!r}; use one of {', '.join(ENGINES)}")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value != "cpu" and not value.startswith("cuda"):
            raise ValueError(f"expected 'cpu' or 'cuda[:N]', got {value!r}")
        return value


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """One `--flag` per setting, defaulting to 'not given' so env vars still apply; its help
    tells the choices, the default and the variable."""
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        choices = get_args(field.annotation) if get_origin(field.annotation) is Literal else ()
        default = field.get_default(call_default_factory=True)
        words = [field.description or name]
        if choices:
            words.append(f"one of {', '.join(map(str, choices))}")
        empty = default is None or (isinstance(default, list | tuple) and not default)
        words.append(f"default {'none' if empty else default}")
        words.append(f"env DUPLEX_{name.upper()}")
        parser.add_argument(
            flag, dest=name, default=None, metavar=name.upper(),
            help="; ".join(words).replace("%", "%%"),
        )  # fmt: skip


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Build settings from env vars overridden by the flags that were given."""
    given: dict[str, Any] = {
        name: getattr(args, name)
        for name in Settings.model_fields
        if getattr(args, name, None) is not None
    }
    return Settings(**given)


def describe_error(exc: ValidationError) -> str:
    """One readable line for the first invalid setting."""
    first = exc.errors()[0]
    name = ".".join(str(p) for p in first["loc"])
    return f"invalid setting {name} (--{name.replace('_', '-')} / DUPLEX_{name.upper()}): " + str(
        first["msg"]
    )
