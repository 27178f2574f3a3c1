"""The one HTTP seam: pooled clients, timeouts, retries, and error mapping.

This module is the only user of ``aiohttp`` as a client (and of ``tenacity``, for the retry
loop). Upstreams call ``HttpPool.get``; what comes back is a 2xx ``Reply`` (status, headers,
body: the seam's own type, so no upstream depends on the library), or a ``RelayError``:

- connect errors, resets and truncated bodies, and 429 / 502 / 503 / 504 answers are retried
  with capped exponential backoff and jitter (a ``Retry-After`` header, capped, wins over the
  computed wait); after the last try they become 503 (could not connect, 429, 503), 502 (bad
  gateway, broken transfer) or 504 (timeouts);
- a read timeout is not retried: a server that is slow once is likely slow again, and retrying
  would multiply the client's wait;
- a 4xx is not retried: it goes to the caller's ``on_client_error``, which makes the error to
  raise, or None to have the reply returned as it is (a BossDB JSON error keeps its
  status and code across a chain; DVID's plain-text errors are mapped by the DVID upstream);
- the whole call, retries included, is bounded by ``total`` seconds;
- a body is never read past ``max_bytes`` (what the caller expects, e.g. one cuboid's bytes
  plus its codec's overhead; metadata JSON a few MiB): a bigger one, announced or not, is a 502
  at once, so an upstream cannot make the relay buffer an endless body.
One ``aiohttp.ClientSession`` serves each upstream host (keep-alive, HTTP/1.1, bounded
connections, no cookie jar: callers must not share cookies); the pool lives as long as the app
and is closed with it.

Why aiohttp and not httpx (the design's first choice): a chain hop's largest cost is receiving
a cuboid from the next relay, and httpcore reads it 64 KiB at a time, each read through anyio's
timeout machinery (the figures are in docs/performance.md). aiohttp is already the relay's
client for zarr over http(s), via fsspec.
"""

from __future__ import annotations

import asyncio
import email.utils
import io
import json
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import urlsplit

import aiohttp
import certifi
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_exponential_jitter
from yarl import URL

from .. import __version__
from ..errors import (
    PassThroughError,
    RelayError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from ..forwarding import FrameSink
from ..hops import Hops

__all__ = ["METADATA_MAX_BYTES", "HttpPool", "HttpSettings", "Reply",
           "boss_error_or", "describe", "fsspec_client_kwargs", "json_body"]

_RETRY_STATUSES = frozenset({429, 502, 503, 504})
_MAX_ERROR_TEXT = 200
#: The largest metadata body the relay reads (BossDB and DVID JSON are kilobytes; DVID's
#: repos/info of a busy server a few MiB).
METADATA_MAX_BYTES = 8 * 2**20
_CHUNK = 1 << 20


class _TooLarge(Exception):
    """A body past its cap (an error of the upstream's, not retried)."""


async def _read_into(answer: aiohttp.ClientResponse, max_bytes: int,
                     sink: FrameSink) -> bytes | memoryview:
    """``_read_capped``, the body fed to ``sink`` as it arrives when its length is announced
    (and then a view of it behind the sink's prefix)."""
    length = answer.content_length
    if length is None or length > max_bytes:
        return await _read_capped(answer, max_bytes)
    sink.begin(length)
    async for chunk in answer.content.iter_any():  # what each socket read brought
        sink.feed(chunk)
    return sink.joined()


async def _read_capped(answer: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    """The body, or ``_TooLarge`` as soon as it is known to pass ``max_bytes``."""
    length = answer.content_length
    if length is not None:
        if length > max_bytes:
            raise _TooLarge(f"announced {length} bytes")
        # aiohttp's own read (a subclass may have replaced it): it stops at that length
        return await aiohttp.ClientResponse.read(answer)
    chunks: list[bytes] = []
    size = 0
    async for chunk in answer.content.iter_chunked(_CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise _TooLarge(f"sent more than {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass(frozen=True, slots=True)
class HttpSettings:
    connect: float = 5.0        # seconds to establish a connection
    read: float = 30.0          # seconds between bytes
    total: float = 60.0         # seconds for the whole call, retries included
    retries: int = 3            # extra tries after the first
    backoff: float = 0.2        # first wait, doubled per try, with jitter
    backoff_max: float = 5.0    # cap on one wait (and on Retry-After)
    max_connections: int = 32   # per upstream host
    #: seconds a host that could not be connected to is left alone: requests meanwhile fail
    #: at once (503) instead of each spending its retries on it
    down_for: float = 5.0


@dataclass(frozen=True, slots=True)
class Reply:
    """An upstream's answer, its body read whole."""

    status: int
    headers: Mapping[str, str]   # names in lower case
    content: bytes | memoryview  # (a view when it was read into a sink)

    @property
    def text(self) -> str:
        return bytes(self.content).decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(bytes(self.content))


class _Retryable(Exception):
    """A failure worth another try; carries the error to raise if none is left."""

    def __init__(self, error: RelayError, retry_after: float | None = None,
                 unreachable: bool = False) -> None:
        super().__init__(error.message)
        self.error = error
        self.retry_after = retry_after
        self.unreachable = unreachable  # no connection could be made at all


#: aiohttp's errors, most specific first: the error each becomes, its message, and whether
#: another try may help ("retry"), or the host is not there at all ("unreachable": it is then
#: left alone for a while). A certificate is not retried: it will not be trusted next time
#: either; a read timeout neither: a server slow once is likely slow again.
_FOREIGN: tuple[tuple[type[Exception], type[RelayError], str, str], ...] = (
    (aiohttp.ClientConnectorCertificateError, UpstreamUnavailable,
     "cannot connect to {where}: its TLS certificate is not trusted", "final"),
    (aiohttp.ClientSSLError, UpstreamUnavailable, "cannot connect to {where}: TLS failed",
     "final"),
    (aiohttp.ConnectionTimeoutError, UpstreamUnavailable, "cannot connect to {where}",
     "unreachable"),
    (aiohttp.ServerTimeoutError, UpstreamTimeout, "{where} did not answer in time", "final"),
    (aiohttp.ClientConnectorError, UpstreamUnavailable, "cannot connect to {where}",
     "unreachable"),
    (aiohttp.ServerDisconnectedError, UpstreamError, "{where} broke off the transfer", "retry"),
    (aiohttp.ClientPayloadError, UpstreamError, "{where} broke off the transfer", "retry"),
    (aiohttp.ClientOSError, UpstreamError, "{where} broke off the transfer", "retry"),
    (aiohttp.ClientError, UpstreamError, "cannot read from {where}: {name}", "final"),
)


def _mapped(exc: aiohttp.ClientError, where: str) -> Exception:
    """The relay's error for one of aiohttp's (``_Retryable`` around it if worth a retry)."""
    for foreign, error, message, then in _FOREIGN:
        if isinstance(exc, foreign):
            mapped = error(message.format(where=where, name=type(exc).__name__))
            if then == "final":
                return mapped
            return _Retryable(mapped, unreachable=then == "unreachable")
    raise AssertionError(exc)  # pragma: no cover - the last row catches every ClientError


def _retry_after(response: Reply) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return None if parsed is None else max(0.0, parsed.timestamp() - time.time())


def describe(url: str, label: str) -> str:
    """``label host:port`` for messages and logs: never the URL, which may carry credentials."""
    parts = urlsplit(url)
    return f"{label} {parts.hostname or '?'}:{parts.port or ''}".rstrip(":")


def _text(response: Reply) -> str:
    text = response.text.strip().replace("\n", " ")
    return text[:_MAX_ERROR_TEXT]


def boss_error_or(response: Reply, fallback: Callable[[Reply], RelayError]) -> RelayError:
    """The BossDB JSON error in ``response``, re-raised as is, or ``fallback(response)``."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return fallback(response)
    if (isinstance(body, dict) and isinstance(body.get("status"), int)
            and isinstance(body.get("code"), int) and 400 <= body["status"] < 600):
        return PassThroughError(body["status"], body["code"], str(body.get("message", "")))
    return fallback(response)


def _default_client_error(response: Reply) -> RelayError:
    return boss_error_or(
        response,
        lambda r: UpstreamError(f"upstream answered {r.status}: {_text(r)}"),
    )


def _status_error(response: Reply, where: str) -> RelayError:
    status = response.status
    if status in (429, 503):
        return UpstreamUnavailable(f"{where} is unavailable ({status})")
    if status == 504:
        return UpstreamTimeout(f"{where} timed out upstream (504)")
    return UpstreamError(f"{where} failed ({status})")


class HttpPool:
    """One session per upstream host, shared by every source that reads from it."""

    def __init__(self, hops: Hops | None = None) -> None:
        """``hops``: the relay's place in a chain, to name itself in ``Via`` upstream."""
        self.hops = hops
        self._sessions: dict[tuple[str, str, HttpSettings], aiohttp.ClientSession] = {}
        self._tls: ssl.SSLContext | None = None
        # (scheme, authority) → until when it is left alone, and why
        self._down: dict[tuple[str, str], tuple[float, str]] = {}

    def _tls_context(self) -> ssl.SSLContext:
        # certifi's CA bundle, as requests (and so intern) and httpx use: a Python without
        # system certificates (python.org builds on macOS) still verifies BossDB's.
        if self._tls is None:
            self._tls = ssl.create_default_context(cafile=certifi.where())
        return self._tls

    def _session(self, url: URL, settings: HttpSettings) -> aiohttp.ClientSession:
        key = (url.scheme, url.raw_authority, settings)
        session = self._sessions.get(key)
        if session is None or session.closed:
            # Waiting for a pooled connection is bounded by the total timeout, not ``connect``.
            timeout = aiohttp.ClientTimeout(total=None, connect=None, sock_connect=settings.connect,
                                            sock_read=settings.read)
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=settings.max_connections, limit_per_host=settings.max_connections,
                    ssl=self._tls_context() if url.scheme == "https" else True),
                timeout=timeout,
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
                headers={"User-Agent": f"relay/{__version__}"},
            )
            self._sessions[key] = session
        return session

    async def get(
        self,
        url: str,
        settings: HttpSettings,
        *,
        where: str,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        on_client_error: Callable[[Reply], RelayError | None] = _default_client_error,
        max_bytes: int = METADATA_MAX_BYTES,
        method: str = "GET",
        body: bytes | None = None,
        sink: FrameSink | None = None,
    ) -> Reply:
        """GET ``url``; a 2xx reply with its body read (at most ``max_bytes``), or a
        RelayError.

        ``url`` is sent as built (already encoded, never re-quoted). ``where`` names the
        upstream in error messages: never a URL with credentials in it. ``post`` is the same
        with a body: a cutout POST is idempotent (the same voxels to the same place), so it
        is retried like a GET. A 2xx body is fed to ``sink`` as it arrives, try by try
        (``relay.forwarding``).
        """
        target = URL(url, encoded=True)
        if target.user is not None and headers and any(
                name.lower() == "authorization" for name in headers):
            target = target.with_user(None)  # a token given explicitly wins over URL credentials
        if self.hops is not None:  # loop detection and request ids down a chain (relay.hops)
            headers = {**(headers or {}), **self.hops.upstream_headers()}
        host = (target.scheme, target.raw_authority)
        if (down := self._down.get(host)) is not None:
            if time.monotonic() < down[0]:
                raise UpstreamUnavailable(down[1])
            del self._down[host]
        session = self._session(target, settings)

        async def attempt() -> Reply:
            try:
                # a stream, made afresh for each try: aiohttp copies raw bytes on the loop
                data = io.BytesIO(body) if body is not None else None
                async with session.request(method, target, headers=headers, params=params,
                                           data=data, allow_redirects=False) as answer:
                    # an error page is read only as far as its message is shown
                    ok = 200 <= answer.status < 300
                    response = Reply(answer.status,
                                     {k.lower(): v for k, v in answer.headers.items()},
                                     await _read_into(answer, max_bytes, sink)
                                     if ok and sink is not None else
                                     await _read_capped(answer, max_bytes if ok else
                                                        METADATA_MAX_BYTES))
            except _TooLarge as exc:
                raise UpstreamError(f"{where} sent a body larger than expected ({exc})") from exc
            except aiohttp.ClientError as exc:
                raise _mapped(exc, where) from exc
            if response.status in _RETRY_STATUSES:
                raise _Retryable(_status_error(response, where), _retry_after(response))
            if 400 <= response.status < 500:
                if (error := on_client_error(response)) is not None:
                    raise error
                return response  # a 4xx the caller reads itself
            if response.status == 508:  # a loop further down the chain: its message names it
                raise boss_error_or(response, lambda r: _status_error(r, where))
            if not 200 <= response.status < 300:
                raise UpstreamError(f"{where} failed ({response.status})")
            return response

        backoff = wait_exponential_jitter(multiplier=settings.backoff, max=settings.backoff_max,
                                          jitter=settings.backoff)

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, _Retryable) and exc.retry_after is not None:
                return min(exc.retry_after, settings.backoff_max)
            return float(backoff(state))

        try:
            async with asyncio.timeout(settings.total):
                async for try_ in AsyncRetrying(
                    stop=stop_after_attempt(settings.retries + 1),
                    wait=wait,
                    retry=retry_if_exception(lambda e: isinstance(e, _Retryable)),
                    reraise=True,
                ):
                    with try_:
                        return await attempt()
        except _Retryable as exc:
            if exc.unreachable:
                self._down[host] = (time.monotonic() + settings.down_for,
                                    f"{exc.error.message} (left alone for "
                                    f"{settings.down_for:g} s before trying again)")
            raise exc.error from exc
        except TimeoutError as exc:
            raise UpstreamTimeout(f"{where} did not answer within {settings.total:g} s") from exc
        _unreachable()

    async def post(self, url: str, body: bytes, settings: HttpSettings, *, where: str,
                   headers: Mapping[str, str] | None = None,
                   on_client_error: Callable[[Reply], RelayError | None] = _default_client_error,
                   ) -> Reply:
        """POST ``body`` to ``url`` (see ``get``); the reply's body is an error's at most."""
        return await self.get(url, settings, where=where, headers=headers, method="POST",
                              body=body, on_client_error=on_client_error)

    async def aclose(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()


def _unreachable() -> NoReturn:  # pragma: no cover - AsyncRetrying returns or raises
    raise AssertionError("retry loop ended without a result")


class _CappedResponse(aiohttp.ClientResponse):
    """A response whose whole-body ``read`` stops past ``max_bytes`` (fsspec reads every file
    with ``read()``). ``_body`` is where aiohttp keeps a body once read, as its own ``read``
    does."""

    max_bytes = METADATA_MAX_BYTES

    async def read(self) -> bytes:
        if self._body is None:
            try:
                self._body = await _read_capped(self, self.max_bytes)
            except _TooLarge as exc:
                self.close()
                raise aiohttp.ClientPayloadError(f"body larger than expected ({exc})") from exc
        return self._body


def fsspec_client_kwargs(settings: HttpSettings, max_bytes: int) -> dict[str, Any]:
    """aiohttp session options for an fsspec HTTP filesystem (zarr over http): the source's
    timeouts, and a cap on every body it reads."""
    capped = type("CappedResponse", (_CappedResponse,), {"max_bytes": max_bytes})
    return {
        "timeout": aiohttp.ClientTimeout(total=settings.total, sock_connect=settings.connect,
                                         sock_read=settings.read),
        "response_class": capped,
        "trust_env": False,
        "cookie_jar": aiohttp.DummyCookieJar(),
    }


def json_body(response: Reply, where: str) -> Any:
    """The JSON of a 2xx response, or a 502: a 200 with an HTML body is an upstream fault."""
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UpstreamError(f"{where} sent something that is not JSON") from exc
