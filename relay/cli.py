"""``relay serve [--config FILE] [--host H] [--port P] [--port-file F] [--workers N]``,
``relay warm URL C/E/CH [--res R] [--box x0:x1,y0:y1,z0:z1] [--concurrency N] [--token T]`` and
``relay demo [--dir DIR]`` (``python -m relay`` is the same program).

Without ``--config`` (or ``RELAY_CONFIG``) it serves the embedded demo, generating it first if
needed. Errors a user can fix (a bad config, a busy port) end the program with one line on
stderr and a non-zero status; a config error exits with status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

from .config import ConfigFileError, Settings, load_settings, with_server

__all__ = ["main"]

log = logging.getLogger("relay")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relay", description="A caching relay speaking the BossDB REST dialect."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--config", type=Path, help="YAML config file (default: $RELAY_CONFIG, "
                       "else the embedded demo)")
    serve.add_argument("--host", help="bind address (overrides the config)")
    serve.add_argument("--port", type=int, help="port (overrides the config); 0 lets the "
                       "system choose a free one, which is logged")
    serve.add_argument("--port-file", type=Path, help="once listening, write the bound port to "
                       "this file (with --port 0: how a script learns which port it got)")
    serve.add_argument("--workers", type=int, help="worker processes sharing the disk cache "
                       "(overrides server.workers)")
    serve.add_argument("--log-level", default="info",
                       choices=["critical", "error", "warning", "info", "debug"])
    warm = commands.add_parser(
        "warm", help="read a region through a running relay so that it is cached "
        "(a progress bar; run again to resume)")
    warm.add_argument("url", help="the relay, e.g. http://127.0.0.1:8000")
    warm.add_argument("channel", help="COLLECTION/EXPERIMENT/CHANNEL")
    warm.add_argument("--res", type=int, default=0, help="resolution level (default 0)")
    warm.add_argument("--box", help="x0:x1,y0:y1,z0:z1 in the resolution's voxels "
                      "(default: the whole level)")
    warm.add_argument("--concurrency", type=int, default=4,
                      help="cuboids in flight at once (default 4)")
    warm.add_argument("--token", help="BossDB token, sent as 'Authorization: Token T'")
    warm.add_argument("--index", action="store_true",
                      help="annotation channels: build the label index too (bounding boxes, "
                      "ids of large regions)")
    cache = commands.add_parser(
        "cache", help="the disk (and Redis) cache of a config: stats, verify, purge; offline "
        "or beside a running relay")
    cache.add_argument("action", choices=["stats", "verify", "purge"])
    cache.add_argument("--config", type=Path, help="YAML config file (default: $RELAY_CONFIG, "
                       "else the embedded demo's)")
    cache.add_argument("--tier", choices=["disk", "redis", "all"], default="all")
    cache.add_argument("--channel", help="COLLECTION/EXPERIMENT/CHANNEL, '*' in any part")
    cache.add_argument("--res", type=int, help="one resolution level")
    cache.add_argument("--source", type=int, help="one source, by its index in the config")
    cache.add_argument("--orphans", action="store_true",
                       help="only the entries no configured source claims")
    cache.add_argument("--all", action="store_true", help="purge: every entry")
    demo = commands.add_parser(
        "demo", help="generate the embedded demo dataset and print a config that serves it"
    )
    demo.add_argument("--dir", type=Path, help="where to put it (default: $RELAY_DEMO_DIR, "
                      "else ~/.cache/relay/demo)")
    return parser


def _demo(args: argparse.Namespace) -> int:
    import yaml

    from .demo import demo_sources, ensure_demo

    directory = ensure_demo(args.dir)
    print(f"relay: demo dataset in {directory}", file=sys.stderr)
    print(yaml.safe_dump({"sources": demo_sources(directory)}, sort_keys=False), end="")
    return 0


def _warm(args: argparse.Namespace) -> int:
    import asyncio

    from .errors import RelayError
    from .warm import parse_box, warm

    if args.channel.count("/") != 2 or not all(args.channel.split("/")):
        print(f"relay warm: {args.channel!r}: expected COLLECTION/EXPERIMENT/CHANNEL",
              file=sys.stderr)
        return 2
    try:
        box = parse_box(args.box) if args.box else None
        return asyncio.run(warm(args.url, args.channel, args.res, box, args.concurrency,
                                args.token, index=args.index))
    except ValueError as exc:
        print(f"relay warm: {exc}", file=sys.stderr)
        return 2
    except RelayError as exc:
        print(f"relay warm: {exc.status} {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _cache(args: argparse.Namespace) -> int:
    import asyncio

    from .cache import admin
    from .cache.base import CacheTier
    from .cache.disk import DiskTier
    from .cache.redis import RedisTier

    path = _config_path(args)
    try:
        overrides: dict[str, Any] = {}
        if path is None:
            from .demo import DEMO_VERSION, default_demo_dir, demo_sources

            overrides["sources"] = demo_sources(default_demo_dir() / DEMO_VERSION)
        settings = load_settings(path, **overrides)
    except ConfigFileError as exc:
        print(f"relay: config error: {exc}", file=sys.stderr)
        return 2
    selection = admin.Selection(args.channel, args.res, args.source, args.orphans)
    if args.action == "purge" and selection.everything and not args.all:
        print("relay cache: purge what? give --channel, --res, --source, --orphans or --all",
              file=sys.stderr)
        return 2
    if args.source is not None and not 0 <= args.source < len(settings.sources):
        print(f"relay cache: --source {args.source}: the config has sources 0 to "
              f"{len(settings.sources) - 1}", file=sys.stderr)
        return 2
    cache = settings.cache
    tiers: list[CacheTier] = []
    if args.tier in ("disk", "all") and cache.disk_dir is not None:
        if not cache.disk_dir.is_dir():
            print(f"relay cache: no disk cache at {cache.disk_dir}", file=sys.stderr)
            return 1
        tiers.append(DiskTier(cache.disk_dir, int(cache.disk_bytes)))
    if args.tier in ("redis", "all") and cache.redis_url is not None:
        tiers.append(RedisTier(cache.redis_url, cache.redis_prefix, cache.redis_ttl_seconds,
                               timeout_seconds=max(5.0, cache.redis_timeout_seconds)))
    if not tiers:
        print(f"relay cache: the config has no {'' if args.tier == 'all' else args.tier + ' '}"
              "cache tier to look at (cache.disk_dir, cache.redis_url)", file=sys.stderr)
        return 1
    action = {"stats": admin.stats, "verify": admin.verify, "purge": admin.purge}[args.action]

    async def run() -> int:
        try:
            return await action(tiers, settings.sources, selection)
        finally:
            for tier in tiers:
                await tier.aclose()

    try:
        return asyncio.run(run())
    except KeyboardInterrupt:
        return 130
    except OSError as exc:  # Redis down, a disk gone
        print(f"relay cache: {exc}", file=sys.stderr)
        return 1


def _config_path(args: argparse.Namespace) -> Path | None:
    """``--config``, else ``$RELAY_CONFIG``, else None (the embedded demo)."""
    if args.config is not None:
        return Path(args.config)
    return Path(os.environ["RELAY_CONFIG"]) if os.environ.get("RELAY_CONFIG") else None


def _settings(args: argparse.Namespace) -> Settings:
    path = _config_path(args)
    overrides: dict[str, Any] = {}
    if path is None:
        from .demo import demo_sources, ensure_demo

        print("relay: no --config given: serving the embedded demo", file=sys.stderr)
        overrides["sources"] = demo_sources(ensure_demo())
    settings = load_settings(path, **overrides)
    server: dict[str, Any] = {}
    if args.host is not None:
        server["host"] = args.host
    if args.port is not None:
        server["port"] = args.port
    if args.workers is not None:
        server["workers"] = args.workers
    if settings.server.relay_id is None:  # chosen here, so every worker process shares it
        from .hops import new_relay_id

        server["relay_id"] = new_relay_id()
    return with_server(settings, **server)


def _check_cache_dir(settings: Settings) -> str | None:
    """Fail fast, in one line, on a disk cache directory the relay cannot write."""
    directory = settings.cache.disk_dir
    if directory is None or settings.cache.disk_bytes == 0:
        return None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".relay-write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        return f"cannot use cache.disk_dir {directory}: {exc.strerror or exc}"
    return None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from .logs import configure

    configure(getattr(args, "log_level", "info"))
    if args.command == "demo":
        return _demo(args)
    if args.command == "warm":
        return _warm(args)
    if args.command == "cache":
        return _cache(args)
    try:
        settings = _settings(args)
    except ConfigFileError as exc:
        print(f"relay: config error: {exc}", file=sys.stderr)
        return 2
    import asyncio

    from .app import check_required, startup_warnings

    configure(args.log_level, settings.server.log_format)

    for warning in startup_warnings(settings):
        log.warning("%s", warning)
    problems = [p for p in [_check_cache_dir(settings)] if p]
    problems += asyncio.run(check_required(settings))
    for problem in problems:
        print(f"relay: {problem}", file=sys.stderr)
    if problems:
        return 1
    return _serve(settings, args.log_level, args.port_file)


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here rather than by uvicorn: with ``--port 0`` the port is
    only known once bound, and a busy port is one line and status 1, not uvicorn's exit 3."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)  # --workers: the worker processes accept on it
    return sock


def _raise_descriptor_limit(settings: Settings) -> None:
    """Raise the soft limit on open files to the hard one (connections are descriptors; a
    default soft limit of 1,024 is a few hundred idle clients away from refusing everyone),
    and say what the relay got. Worker processes inherit it."""
    import resource

    from .protocol import default_max_connections

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, target,
                        exc)
    now = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    cap = settings.server.max_connections or default_max_connections()
    log.info("open-file limit %d (was %d); at most %d connections per process "
             "(server.max_connections)", now, soft, cap)


def _write_port(path: Path, port: int) -> None:
    """Write the port whole or not at all: a reader polling for the file never sees half."""
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(f"{port}\n")
    partial.replace(path)


def _serve(settings: Settings, log_level: str, port_file: Path | None = None) -> int:
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from .app import LOG_LEVEL_ENV, SETTINGS_ENV, create_app
    from .protocol import BoundedHttpToolsProtocol

    server_settings = settings.server
    try:
        sock = _bind(server_settings.host, server_settings.port)
    except OSError as exc:  # e.g. the port is taken
        print(f"relay: cannot serve on {server_settings.host}:{server_settings.port}: {exc}",
              file=sys.stderr)
        return 1
    port = sock.getsockname()[1]
    _raise_descriptor_limit(settings)
    log.info(
        "serving %d source(s) on %s://%s:%d with %d worker(s)", len(settings.sources),
        "https" if server_settings.tls_cert else "http", server_settings.host,
        port, server_settings.workers,
    )
    options: dict[str, Any] = dict(
        host=server_settings.host,
        port=port,
        log_level=log_level,
        log_config=None,  # uvicorn's records go to the relay's handler (relay.logs)
        access_log=False,  # the relay writes its own access line, with the request id
        ssl_certfile=str(server_settings.tls_cert.expanduser()) if server_settings.tls_cert
        else None,
        ssl_keyfile=str(server_settings.tls_key.expanduser()) if server_settings.tls_key
        else None,
        timeout_graceful_shutdown=server_settings.shutdown_timeout,
        http=BoundedHttpToolsProtocol,
    )
    if port_file is not None:
        _write_port(port_file, port)
    with sock:
        if server_settings.workers > 1:
            # Worker processes import the app by name; they get the settings validated here,
            # not a second reading of the file and environment.
            os.environ[SETTINGS_ENV] = settings.model_dump_json()
            os.environ[LOG_LEVEL_ENV] = log_level
            # their counters and histograms go to files in one fresh directory, which any
            # worker's /metrics sums (relay.metrics); set before they start, so they inherit it
            import shutil
            import tempfile

            metrics_dir = tempfile.mkdtemp(prefix="relay-metrics-")
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
            config = uvicorn.Config("relay.app:from_environment", factory=True,
                                    workers=server_settings.workers, **options)
            try:
                Multiprocess(config, sockets=[sock]).run()
            finally:
                shutil.rmtree(metrics_dir, ignore_errors=True)
            return 0
        server = uvicorn.Server(uvicorn.Config(create_app(settings), **options))
        server.run(sockets=[sock])
    return 0 if server.started else 1
