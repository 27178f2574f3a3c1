"""Settings: one YAML file, ``RELAY_`` environment overrides, validated once at start.

Precedence (highest first): ``RELAY_…`` environment variables (``__`` nests:
``RELAY_CACHE__MEMORY_BYTES=1GiB``), then the YAML file, then the defaults below. Strings in the
file may use ``${VAR}`` and ``${VAR:-default}``; they are expanded from the environment after
parsing, so an expanded value can never change the YAML structure.

The validated ``Settings`` object is passed in to whatever needs it; nothing reads a global.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from .cache.redis import parse_redis_url
from .model import SourceSettings, set_source_check

__all__ = [
    "CacheSettings",
    "ConfigFileError",
    "ServerSettings",
    "Settings",
    "SourceSettings",
    "load_settings",
    "with_server",
]

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Model):
    host: str = "127.0.0.1"
    #: 0: the system chooses a free port (``relay serve --port 0 --port-file F`` reports it)
    port: int = Field(8000, ge=0, le=65535)
    cors_origins: tuple[str, ...] = ("*",)
    #: Host header names the relay answers to, against DNS rebinding (a web page whose own name
    #: resolves to this relay). null: the localhost names, the bind address and, when bound to
    #: every interface, the machine's own names; IP literals are always accepted; ".example.org"
    #: accepts that domain and its subdomains; "*" accepts any name. /healthz is never checked.
    allowed_hosts: tuple[str, ...] | None = None
    #: when set, every route but /healthz needs ``Authorization: Token <one of these>``
    #: (or ``Bearer``); otherwise 401
    tokens: tuple[str, ...] | None = None
    #: when set, a cutout POST (to a ``writable`` source) needs ``Authorization: Token <one of
    #: these>`` (or ``Bearer``), whatever ``tokens`` lets through; otherwise 401. Reads are
    #: not affected (docs/writes.md)
    write_tokens: tuple[str, ...] | None = None
    #: requests served at once; one more gets 503 BossDB JSON at once instead of queueing
    max_concurrency: int = Field(256, ge=1)
    #: one memory budget for the cutouts being assembled and the bodies being sent, across all
    #: requests; a request that does not fit waits up to ``inflight_wait_seconds``, then 503
    max_inflight_bytes: ByteSize = ByteSize(2**30)
    inflight_wait_seconds: float = Field(5.0, ge=0)
    #: the largest answer of a data route (BossDB cutout or precomputed chunk), uncompressed,
    #: in bytes (the dtype's size counts in full); past it: 413, code 2000
    max_cutout_bytes: ByteSize = ByteSize(512 * 2**20)
    #: the most memory one mesh may take to make (a fragment's meshing, by the faces of its
    #: segment's voxel surface; a merged mesh, by its fragments): past it 413, code 2000
    #: (docs/services.md)
    max_mesh_bytes: ByteSize = ByteSize(256 * 2**20)
    #: the most voxel bytes (one level of one channel, the dtype's size in full) the label
    #: index may cover to answer a bounding box or a channel's first id reservation: each
    #: cell is read once, then cached and kept true by writes; past it 413, code 2000
    #: (docs/objects.md)
    max_index_bytes: ByteSize = ByteSize(64 * 2**30)
    #: where the relay keeps what is not a cache (state.sqlite): the metadata key/values of its
    #: own collections, experiments and channels and each annotation channel's next
    #: unreserved id. Relays of a fleet share it (one host or one shared volume); it must
    #: survive restarts (docs/objects.md)
    state_dir: Path = Path("~/.local/share/relay")
    #: seconds a connection may take to send a complete request head (slow-loris): then 408
    header_timeout: float = Field(10.0, gt=0)
    #: seconds a response may wait for the client to read any of it: then the connection is
    #: dropped and its body freed (nginx's send_timeout)
    send_timeout: float = Field(60.0, gt=0)
    #: open connections per process; one more is refused with 503 at once. null: the
    #: descriptor limit (raised to its hard limit at start) less a reserve for files and
    #: upstream connections
    max_connections: int | None = Field(None, ge=1)
    #: on SIGTERM, seconds to let requests in progress finish before closing them
    shutdown_timeout: int = Field(30, ge=1)
    #: worker processes; they share the disk tier (each has its own memory tier, and requests
    #: for the same cuboid coalesce within a process, not across processes)
    workers: int = Field(1, ge=1, le=64)
    #: "text": one readable line per record; "json": one JSON object per line (relay.logs).
    #: Every request leaves an access line (at info) with its request id.
    log_format: Literal["text", "json"] = "text"
    #: how this relay names itself in the ``Via`` header of its upstream requests (loop
    #: detection); null: a random id chosen at start, shared by its worker processes
    relay_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    #: a request that arrives through this many proxies (``Via`` entries) is refused with 508
    max_hops: int = Field(10, ge=1, le=100)
    #: PEM certificate and key: serve HTTPS (neuroglancer's boss:// source refuses http hosts)
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _host_list(cls, value: Any) -> Any:
        # "a,b" as well as a list: the list can then come from one ${VAR} in the file
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("state_dir")
    @classmethod
    def _expand_state(cls, value: Path) -> Path:
        return value.expanduser()

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both or neither")
        for path in (self.tls_cert, self.tls_key):
            if path is not None and not path.expanduser().is_file():
                raise ValueError(f"no such file: {path}")
        return self


class CacheSettings(_Model):
    memory_bytes: ByteSize = ByteSize(512 * 2**20)
    #: recently used cuboids kept decoded (raw voxels), so small and unaligned cutouts inside
    #: them are a slice, not a decompression; on top of memory_bytes; 0 disables
    decoded_bytes: ByteSize = ByteSize(128 * 2**20)
    disk_dir: Path | None = Field(Path("~/.cache/relay"), validate_default=True)
    disk_bytes: ByteSize = ByteSize(20 * 2**30)
    #: the fleet's shared tier, after memory and disk: redis://host:6379/0, rediss://…,
    #: unix:///run/redis.sock, or a Cluster as redis+cluster://host:port,host:port
    redis_url: str | None = None
    #: put before every key, so several fleets (or other programs) can share one Redis
    redis_prefix: str = Field("relay:", pattern=r"^[^{}\s]*$")
    #: each value's expiry in Redis (null: only Redis's own eviction, maxmemory + allkeys-lru)
    redis_ttl_seconds: float | None = Field(None, gt=0)
    #: how long a relay may read a cuboid upstream while the fleet waits for it; a relay that
    #: dies mid-read blocks the others for at most this long
    redis_lease_seconds: float = Field(10.0, gt=0)
    #: a Redis call that takes longer is an error (and Redis is skipped for a few seconds)
    redis_timeout_seconds: float = Field(1.0, gt=0)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None:
            parse_redis_url(value)
        return value

    @field_validator("disk_dir")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RELAY_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    server: ServerSettings = ServerSettings()
    cache: CacheSettings = CacheSettings()
    sources: tuple[SourceSettings, ...] = ()

    @model_validator(mode="after")
    def _writes_need_one_view(self) -> Settings:
        # each worker holds its own memory tier and decoded cuboids: only the shared tier's
        # versions tell the others what a write in one of them dropped (docs/writes.md)
        writable = [s for s in self.sources if s.writable and s.cache]
        if writable and self.server.workers > 1 and self.cache.redis_url is None:
            raise ValueError(
                "writable sources with server.workers > 1 need cache.redis_url (each worker "
                "caches on its own, and a write in one must reach the others' copies); set "
                "it, run one worker, or set cache: false on the writable sources")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file (the file arrives as init kwargs).
        return (env_settings, init_settings)


class ConfigFileError(Exception):
    """A config that cannot be used; ``str()`` is the one line the CLI prints."""


def _expand(value: Any) -> Any:
    if isinstance(value, str):
        return _VAR.sub(lambda m: os.environ.get(m[1], m[2] if m[2] is not None else ""), value)
    if isinstance(value, list):
        return [_expand(v) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    return value


def _check_source(kind: str, options: dict[str, Any]) -> None:
    """A source's kind is a registered one and its other keys are options of that kind. The
    message starts with the key at fault (``_first_error`` adds it to the location)."""
    from .upstreams.kinds import registry

    problem = registry.problem(kind, options)
    if problem is not None:
        raise ValueError(problem)


set_source_check(_check_source)

#: "key: message" from a check of a whole entry (``_check_source``)
_KEYED = re.compile(r"^([a-z_][a-z0-9_.]*): (.*)$", re.S)


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    loc = [str(part) for part in error["loc"]]
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    elif error["type"] == "value_error" and (keyed := _KEYED.match(message)):
        loc.append(keyed[1])
        message = keyed[2]
    return f"{'.'.join(loc) or '(top level)'}: {message}"


def with_server(settings: Settings, **changes: Any) -> Settings:
    """``settings`` with some ``server`` keys replaced (CLI flags), validated like the file's
    values: ``model_copy`` alone would not check them."""
    try:
        server = ServerSettings.model_validate({**settings.server.model_dump(), **changes})
    except ValidationError as exc:
        raise ConfigFileError(f"command line: {_first_error(exc)}") from exc
    return settings.model_copy(update={"server": server})


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Read, expand and validate a config file (or only the environment when ``path`` is None).

    ``overrides`` (e.g. a CLI ``--port``) win over the file but not over ``RELAY_`` variables;
    the CLI applies its flags after this call for that reason.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigFileError(f"cannot read config file {path}: {exc.strerror}") from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigFileError(f"{path}: not valid YAML{where}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigFileError(f"{path}: the top level must be a mapping")
        data = _expand(loaded)
    data.update(overrides)
    try:
        return Settings(**data)
    except ValidationError as exc:
        where = f"{path}: " if path is not None else ""
        raise ConfigFileError(f"{where}{_first_error(exc)}") from exc
