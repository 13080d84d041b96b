"""What a server runs: its models, its tenants and their limits, its queue (frozen dataclasses,
their defaults written once, here). `wasillama serve` builds one from its flags, a JSON config
file (``--config``) or both; docs/server.md shows the file."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from ..errors import InvalidArgumentError
from ..options import parse_size


@dataclass(frozen=True)
class ModelConfig:
    """One model the server offers, by `name` (what requests put in "model").

    pods: sandboxes (Model instances), each with its own memory, threads and batch; more pods use
    more cores. parallel: sequences per pod, decoded together (continuous batching). n_ctx:
    tokens each sequence holds. max_memory: a pod's sandbox memory cap.
    embeddings: None = decided by the file (an encoder with a pooling type serves /v1/embeddings).
    """

    name: str
    path: str
    backend: str = "wasm"
    pods: int = 1
    parallel: int = 4
    threads: int = 1
    n_ctx: int = 2048
    max_memory: int | str | None = None
    embeddings: bool | None = None
    trust_model: bool = False  # needed for the native backend, which is not a sandbox

    def __post_init__(self) -> None:
        if not self.name:
            raise InvalidArgumentError("a model needs a name")
        if self.backend not in ("wasm", "native"):
            raise InvalidArgumentError(f"model {self.name}: backend must be 'wasm' or 'native'")
        if self.pods < 1 or self.parallel < 1 or self.threads < 0 or self.n_ctx < 16:
            raise InvalidArgumentError(f"model {self.name}: pods and parallel must be >= 1, threads >= 0, "
                                       "n_ctx >= 16")
        if self.max_memory is not None:
            object.__setattr__(self, "max_memory", parse_size(self.max_memory, f"model {self.name}: max_memory"))


@dataclass(frozen=True)
class TenantConfig:
    """Who may call, and how much. A request's API key names its tenant.

    max_concurrent: requests running or queued at once. tokens_per_minute: prompt plus
    completion tokens over a sliding minute. max_tokens: the most a request may ask to generate
    (and what it gets when it asks for none). max_prompt_tokens: the longest prompt accepted.
    isolated: the tenant gets pods of its own (its own sandboxes: a trap, a timeout or memory
    exhaustion there reaches no other tenant); max_memory then caps each of its pods.
    """

    name: str
    keys: tuple[str, ...] = ()
    max_concurrent: int = 16
    tokens_per_minute: int | None = None
    max_tokens: int = 1024
    max_prompt_tokens: int | None = None
    isolated: bool = False
    max_memory: int | str | None = None
    models: tuple[str, ...] = ()  # the models it may use; () = all
    request_timeout: float | None = None  # seconds a request may take (queued and running); None = the server's

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", tuple(self.keys))
        object.__setattr__(self, "models", tuple(self.models))
        if self.max_concurrent < 1 or self.max_tokens < 1:
            raise InvalidArgumentError(f"tenant {self.name}: max_concurrent and max_tokens must be >= 1")
        if self.request_timeout is not None and not self.request_timeout > 0:
            raise InvalidArgumentError(f"tenant {self.name}: request_timeout must be > 0")
        if self.tokens_per_minute is not None and self.tokens_per_minute < 1:
            raise InvalidArgumentError(f"tenant {self.name}: tokens_per_minute must be >= 1")
        if self.max_memory is not None:
            object.__setattr__(self, "max_memory", parse_size(self.max_memory, f"tenant {self.name}: max_memory"))


ANONYMOUS = "anonymous"  # the tenant of every request when the server has no API keys


@dataclass(frozen=True)
class ServerConfig:
    """The whole server. With no tenant keys, every request is the anonymous tenant's (fine on
    loopback; give keys before listening anywhere else)."""

    models: tuple[ModelConfig, ...]
    tenants: tuple[TenantConfig, ...] = ()
    queue_size: int = 64  # requests waiting per pool beyond those running; more get 429
    max_loaded_memory: int | str | None = None  # models are loaded lazily; past this, the least recently used goes
    request_timeout: float = 300.0  # seconds a request may take, queued and running
    call_timeout: float = 60.0  # seconds one sandbox call may take before the sandbox is stopped by force
    jobs_db: str | None = None  # SQLite file of the jobs API; None = "jobs.sqlite3" beside the working directory
    job_workers: int = 4  # jobs run at once
    default_max_tokens: int = 256  # what a chat or completion gets when it names no max_tokens

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple(self.models))
        object.__setattr__(self, "tenants", tuple(self.tenants))
        if not self.models:
            raise InvalidArgumentError("the server needs at least one model (-m)")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise InvalidArgumentError(f"model names must be unique: {names}")
        keys = [k for t in self.tenants for k in t.keys]
        if len(set(keys)) != len(keys):
            raise InvalidArgumentError("an API key belongs to two tenants")
        if self.queue_size < 0 or self.request_timeout <= 0 or self.call_timeout <= 0 or self.job_workers < 1:
            raise InvalidArgumentError("queue_size must be >= 0, timeouts > 0, job_workers >= 1")
        if self.max_loaded_memory is not None:
            object.__setattr__(self, "max_loaded_memory", parse_size(self.max_loaded_memory, "max_loaded_memory"))

    @property
    def auth_required(self) -> bool:
        return any(t.keys for t in self.tenants)

    def model(self, name: str) -> ModelConfig | None:
        return next((m for m in self.models if m.name == name), None)


def model_name(path: str) -> str:
    """The name a model given by path is served as: its file name without .gguf."""
    base = os.path.basename(path)
    return base[: -len(".gguf")] if base.lower().endswith(".gguf") else base


def _build(cls: type[Any], data: Mapping[str, Any], what: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise InvalidArgumentError(f"{what}: unknown field(s) {', '.join(sorted(unknown))}")
    return cls(**data)


def load_config(path: str | os.PathLike[str] | None = None, *, models: Sequence[str] = (),
                api_keys: str | os.PathLike[str] | None = None, **overrides: Any) -> ServerConfig:
    """A ServerConfig from a JSON file (``{"models": [...], "tenants": [...], ...}``), plus
    models given by path (`-m`), an API-key file (a key per line, optionally followed by a
    tenant name; lines starting with # are comments) and per-model overrides (pods, parallel,
    threads, n_ctx, backend for every model given by path)."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise InvalidArgumentError(f"cannot read the config file {path}: {e}") from e
        if not isinstance(data, dict):
            raise InvalidArgumentError(f"{path}: the config is a JSON object")
    model_fields = {f.name for f in fields(ModelConfig)}
    per_model = {k: v for k, v in overrides.items() if k in model_fields and v is not None}
    server = {k: v for k, v in overrides.items() if k not in model_fields and v is not None}
    configs = [_build(ModelConfig, m, "a model in the config") for m in data.pop("models", [])]
    configs = [replace(c, path=_local_path(c.path)) for c in configs]
    configs += [ModelConfig(name=model_name(p), path=p, **per_model) for p in map(_local_path, models)]
    tenants = [_build(TenantConfig, t, "a tenant in the config") for t in data.pop("tenants", [])]
    if api_keys is not None:
        tenants = _merge_keys(tenants, Path(api_keys))
    config: ServerConfig = _build(ServerConfig, {**data, **server, "models": configs, "tenants": tenants}, "the config")
    return config


def _local_path(path: str) -> str:
    """A model's file: an hf:// reference is fetched (or found in the hub's cache) at start-up,
    so that every pod and every reload reads the same local file."""
    if not path.startswith("hf://"):
        return path
    from ..hub import fetch

    return str(fetch(path[len("hf://"):]))


def _merge_keys(tenants: list[TenantConfig], path: Path) -> list[TenantConfig]:
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise InvalidArgumentError(f"cannot read the API key file {path}: {e}") from e
    by_name = {t.name: t for t in tenants}
    for n, line in enumerate(lines, 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) > 2:
            raise InvalidArgumentError(f"{path}:{n}: a line is a key and, optionally, a tenant name")
        key, name = parts[0], parts[1] if len(parts) == 2 else f"key-{n}"
        t = by_name.get(name) or TenantConfig(name=name)
        by_name[name] = replace(t, keys=(*t.keys, key))
    return list(by_name.values())


