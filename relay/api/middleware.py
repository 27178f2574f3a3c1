"""The HTTP edge, as one small ASGI middleware: Host check, slash merging, CORS, OPTIONS
preflight, TRACE refused, and the ``Via`` of a chain checked (``relay.hops``).

- A request whose ``Host`` is not one the relay answers to gets 400 BossDB JSON
  (``server.allowed_hosts``; see ``HostFilter``): a web page on another name that resolves to
  the relay (DNS rebinding) cannot read through it, nor through the credentials of its sources.
- ``//`` in a path is merged to ``/`` (as nginx's ``merge_slashes`` does in front of BossDB):
  intern lists collections with ``GET /v1/collection//``.
- Every response carries CORS headers, with or without an ``Origin`` request header: neuroglancer
  runs in a browser, and BossDB allows all origins. Starlette's CORSMiddleware only answers
  requests that carry ``Origin``, so it is not used here.
- ``OPTIONS`` on any path is a preflight and is answered here with 204.
- ``TRACE`` (and ``TRACK``) on any path is 405: the relay never echoes a request back.
- A request whose ``Via`` names this relay came round a loop: 508 at once (``relay.hops``).
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import logging
import re
import socket
import time
from collections.abc import Iterable, Sequence
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qsl, unquote_plus

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import (
    BadRequest,
    LoopDetected,
    MethodNotAllowed,
    Overloaded,
    RelayError,
    Unauthorized,
)
from ..hops import (
    Hops,
    accepted_id,
    accepted_traceparent,
    incoming_via,
    request_id,
    traceparent,
)
from ..logs import ACCESS
from ..metrics import Metrics, Outcome, route_family

__all__ = ["TOKEN_COOKIE", "AuthMiddleware", "CountingMiddleware", "EdgeMiddleware", "HostFilter",
           "redacted_query"]

log = logging.getLogger("relay")

_SLASHES = re.compile(r"/{2,}")
_ALLOW_METHODS = "GET, HEAD, OPTIONS"
_DEFAULT_ALLOW_HEADERS = "Authorization, Content-Type, Accept, Cache-Control"


_LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")
_WILDCARD_BINDS = ("0.0.0.0", "::", "")
_REFUSED_METHODS = frozenset({"TRACE", "TRACK"})
#: paths answered whatever the Host: a container's or a load balancer's health probe
_ANY_HOST_PATHS = frozenset({"/healthz"})


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostFilter:
    """Which ``Host`` header names the relay answers to.

    An IP literal is always accepted: DNS rebinding needs a name the attacker controls, and a
    page loaded from an address is that address's own origin. Names are compared without port,
    case or a trailing dot. Verdicts are remembered per header value (clients send the same
    few), so the check costs a dictionary lookup.
    """

    _REMEMBERED = 256

    def __init__(self, allowed: Iterable[str] | None, bind_host: str) -> None:
        names = list(allowed) if allowed is not None else self.defaults(bind_host)
        self.any = "*" in names
        self.names = frozenset(n.lower().rstrip(".") for n in names if not n.startswith("."))
        self.domains = tuple(n.lower().rstrip(".") for n in names if n.startswith("."))
        self._verdicts: dict[str, bool] = {}

    @staticmethod
    def defaults(bind_host: str) -> list[str]:
        names = [*_LOCAL_NAMES, bind_host]
        if bind_host in _WILDCARD_BINDS:  # every interface: the machine's own names too
            names += [socket.gethostname(), socket.getfqdn()]
        return names

    def allows(self, host_header: str | None) -> bool:
        if self.any or host_header is None:  # no Host at all cannot come from a browser
            return True
        verdict = self._verdicts.get(host_header)
        if verdict is None:
            name = _host_name(host_header)
            verdict = (_is_ip(name) or name in self.names
                       or any(name == d[1:] or name.endswith(d) for d in self.domains))
            if len(self._verdicts) >= self._REMEMBERED:
                self._verdicts.clear()
            self._verdicts[host_header] = verdict
        return verdict


def _host_name(host_header: str) -> str:
    """``name`` of ``name:port``, ``[v6]:port`` or a bare name, lower case, no trailing dot."""
    value = host_header.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    if value.count(":") == 1:
        value = value.partition(":")[0]
    return value.rstrip(".")


async def _refuse(error: RelayError, scope: Scope, receive: Receive, send: Send) -> None:
    await JSONResponse(error.to_json(), status_code=error.status)(scope, receive, send)


class EdgeMiddleware:
    def __init__(self, app: ASGIApp, cors_origins: Sequence[str],
                 hosts: HostFilter | None = None, hops: Hops | None = None,
                 metrics: Metrics | None = None) -> None:
        self.app = app
        self.any_origin = "*" in cors_origins
        self.origins = frozenset(cors_origins)
        self.hosts = hosts or HostFilter(["*"], "")
        self.hops = hops
        self.metrics = metrics or Metrics()

    def _cors(self, request_headers: Headers) -> list[tuple[str, str]]:
        if self.any_origin:
            # expose-headers: neuroglancer reads Content-Range/Content-Encoding (§2.4)
            return [("access-control-allow-origin", "*"), ("access-control-expose-headers", "*")]
        origin = request_headers.get("origin")
        if origin is not None and origin in self.origins:
            return [("access-control-allow-origin", origin), ("vary", "Origin")]
        return [("vary", "Origin")]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if "//" in path:
            scope = dict(scope, path=_SLASHES.sub("/", path))
        request_headers = Headers(scope=scope)
        if not self.hosts.any and path not in _ANY_HOST_PATHS:
            host = request_headers.get("host")
            if not self.hosts.allows(host):
                await _refuse(BadRequest(
                    f"Host {_host_name(host or '')[:100]!r} is not a name this relay answers "
                    "to; add it to server.allowed_hosts"), scope, receive, send)
                return
        if scope["method"] in _REFUSED_METHODS:
            await _refuse(MethodNotAllowed(f"{scope['method']} is not served"), scope, receive,
                          send)
            return
        via = ", ".join(request_headers.getlist("via")) if self.hops is not None else ""
        if via:
            assert self.hops is not None
            try:
                self.hops.check(via)
            except LoopDetected as exc:
                self.metrics.inc("loops_refused_total")
                await _refuse(exc, scope, receive, send)
                return
            token = incoming_via.set(via)  # for the upstream requests this one causes
            try:
                await self._serve(scope, receive, send, request_headers)
            finally:
                incoming_via.reset(token)
            return
        await self._serve(scope, receive, send, request_headers)

    async def _serve(self, scope: Scope, receive: Receive, send: Send,
                     request_headers: Headers) -> None:
        cors = self._cors(request_headers)
        if scope["method"] == "OPTIONS":
            allow_headers = request_headers.get(
                "access-control-request-headers", _DEFAULT_ALLOW_HEADERS
            )
            headers = [
                *cors,
                ("access-control-allow-methods", _ALLOW_METHODS),
                ("access-control-allow-headers", allow_headers[:1024]),
                ("access-control-max-age", "86400"),
                ("content-length", "0"),
            ]
            await send(
                {
                    "type": "http.response.start",
                    "status": 204,
                    "headers": [(k.encode(), v.encode("latin-1", "replace")) for k, v in headers],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for key, value in cors:
                    headers.append(key, value)
            await send(message)

        await self.app(scope, receive, send_with_cors)


#: the cookie a browser carries a relay token in (``/?token=t`` sets it: ``api.viewer``)
TOKEN_COOKIE = "relay_token"


def presented_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Token <t>`` (or ``Bearer <t>``) header, else None."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    return token.strip() if scheme.lower() in ("token", "bearer") else None


def listed(given: str, tokens: Sequence[bytes]) -> bool:
    """Is ``given`` one of ``tokens``? Compared with every one, in constant time each: no
    early exit to time."""
    return any([hmac.compare_digest(given.encode(), t) for t in tokens])


class AuthMiddleware:
    """With ``server.tokens`` set, every route but ``/healthz`` and the root ``/ping/`` needs
    ``Authorization: Token <t>`` or ``Bearer <t>`` with a listed ``t`` (one of ``tokens`` or of
    ``write_tokens``); otherwise 401 BossDB JSON. Preflights never
    carry credentials, so ``OPTIONS`` is answered by ``EdgeMiddleware`` before this runs.

    A browser cannot add that header to what it fetches: it opens the index page as
    ``/?token=t`` once, which sets the ``relay_token`` cookie (``api.viewer``), and a GET or
    HEAD that carries the cookie is let through too (the relay has no route a cross-site page
    could abuse with a GET; the cookie is same-site only)."""

    OPEN_PATHS = frozenset({"/healthz", "/ping/", "/ping"})  # BossDB's ping needs no token

    def __init__(self, app: ASGIApp, tokens: Sequence[str]) -> None:
        self.app = app
        self.tokens = [t.encode() for t in tokens]

    def _listed(self, given: str) -> bool:
        return listed(given, self.tokens)

    def _allowed(self, scope: Scope) -> bool:
        headers = Headers(scope=scope)
        presented = presented_token(headers.get("authorization"))
        if presented is not None:
            return self._listed(presented)
        if scope["method"] not in ("GET", "HEAD"):
            return False
        if scope["path"] == "/":
            query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            if "token" in query:
                return self._listed(query["token"])
        cookie = SimpleCookie()
        with contextlib.suppress(CookieError):
            cookie.load(headers.get("cookie", ""))
        morsel = cookie.get(TOKEN_COOKIE)
        return morsel is not None and self._listed(morsel.value)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["path"] in self.OPEN_PATHS
                or self._allowed(scope)):
            await self.app(scope, receive, send)
            return
        error = Unauthorized()
        response = JSONResponse(error.to_json(), status_code=error.status,
                                headers={"WWW-Authenticate": "Token"})
        await response(scope, receive, send)


#: ``X-Cache`` by outcome: a hit in a tier of this relay or its fleet, a miss (read upstream,
#: or a derived cuboid made now), or stale-if-error
_X_CACHE = {"memory": "HIT", "disk": "HIT", "shared": "HIT", "derived": "MISS",
            "upstream": "MISS", "stale": "STALE"}


#: query parameters whose values are never written to a log (``?token=`` opens the viewer)
_SECRET_NAMES = re.compile(r"token|password|passwd|secret|signature|api[_-]?key|^key$",
                           re.IGNORECASE)
#: what may stand in a logged path or query as it is: printable ASCII but for the quote and
#: the backslash that delimit and escape the text line's fields
_UNSAFE = re.compile(r'[^\x21-\x7e]|["\\]')


def _escaped(text: str) -> str:
    """``text`` with control characters, spaces, quotes, backslashes and anything not ASCII
    percent-encoded (as UTF-8): a ``%0a`` in a URL, decoded into the path, must not start a
    line of its own in the text log."""
    return _UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m[0].encode("utf-8",
                                                                          "surrogateescape")),
                       text)


def redacted_query(query: str) -> str:
    """``query`` with the value of every parameter named like a credential replaced."""
    if not query:
        return query
    parts = []
    for part in query.split("&"):
        name, eq, _ = part.partition("=")
        if eq and _SECRET_NAMES.search(unquote_plus(name)):
            part = f"{name}=REDACTED"
        parts.append(part)
    return "&".join(parts)


def _access(scope: Scope, status: int, nbytes: int, seconds: float, outcome: str,
            rid: str) -> None:
    """The request's access line (``relay.logs``): credentials in the query redacted, and
    every field a client chose escaped."""
    query = redacted_query(scope.get("query_string", b"").decode("latin-1"))
    path = _escaped(scope["path"][:512]) + ("?" + _escaped(query[:512]) if query else "")
    client = scope.get("client")
    fields = {"method": _escaped(scope["method"][:16]), "path": path, "status": status,
              "bytes": nbytes, "ms": round(seconds * 1e3, 2), "outcome": outcome,
              "request_id": rid, "client": client[0] if client else None}
    if (parent := traceparent.get()) is not None:
        fields["traceparent"] = parent
    ACCESS.info('%s "%s %s" %d %d %.1fms %s id=%s', fields["client"], fields["method"],
                fields["path"], status, nbytes, fields["ms"], outcome, rid,
                extra={"fields": fields})


class CountingMiddleware:
    """Counts requests that reach the routes (``relay_requests_total``: how a chain proves that
    a warm front relay sends nothing down it) and times them (``relay_request_seconds`` by route
    and outcome; ``Server-Timing`` and, on data, ``X-Cache`` on the response), and bounds how
    many are in progress: past ``limit`` a request gets 503 BossDB JSON at once, not a place in
    an unbounded queue. Health and metrics polls are neither counted nor limited."""

    UNCOUNTED = frozenset({"/metrics", "/healthz", "/stats", "/viewer/events/relay"})

    def __init__(self, app: ASGIApp, metrics: Metrics, limit: int) -> None:
        self.app = app
        self.metrics = metrics
        self.limit = limit
        self.in_progress = 0
        self.overloaded = False  # logged once per episode, not once per refusal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.UNCOUNTED:
            await self.app(scope, receive, send)
            return
        self.metrics.inc("requests_total")
        if self.in_progress >= self.limit:
            self.metrics.inc("requests_refused_total")
            if not self.overloaded:
                self.overloaded = True
                log.warning("%d requests in progress (server.max_concurrency): refusing more "
                            "with 503 until some finish", self.limit)
            error = Overloaded()
            response = JSONResponse(error.to_json(), status_code=error.status,
                                    headers=error.headers())
            await response(scope, receive, send)
            return
        self.in_progress += 1
        started = time.perf_counter()
        status = 500  # what a request that ends without a response counts as
        nbytes = 0
        headers_in = Headers(scope=scope)
        rid = accepted_id(headers_in.get("x-request-id"))
        ids = (request_id.set(rid),
               traceparent.set(accepted_traceparent(headers_in.get("traceparent"))))

        async def timed(message: Message) -> None:
            nonlocal status, nbytes
            if message["type"] == "http.response.body":
                nbytes += len(message.get("body", b""))
            elif message["type"] == "http.response.start":
                status = message["status"]
                # the handler has said where the data came from (``cutout_headers``)
                outcome = scope.get("state", {}).get("outcome")
                headers = MutableHeaders(scope=message)
                timing = f"app;dur={(time.perf_counter() - started) * 1e3:.1f}"
                if outcome is not None and status < 400:
                    headers.append("X-Cache", _X_CACHE[outcome])
                    timing += f', cache;desc="{outcome}"'
                headers.append("Server-Timing", timing)
                headers.append("X-Request-Id", rid)
            await send(message)

        try:
            await self.app(scope, receive, timed)
        finally:
            self.in_progress -= 1
            if self.overloaded and self.in_progress < self.limit // 2:
                self.overloaded = False
            outcome: Outcome = ("error" if status >= 400
                                else scope.get("state", {}).get("outcome") or "none")
            seconds = time.perf_counter() - started
            self.metrics.observe_request(route_family(scope["path"]), outcome, seconds)
            if ACCESS.isEnabledFor(logging.INFO):
                _access(scope, status, nbytes, seconds, outcome, rid)
            for var, token in zip((request_id, traceparent), ids, strict=True):
                var.reset(token)
