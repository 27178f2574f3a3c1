"""The one HTTP seam: pooled clients, timeouts, retries, and error mapping.

This module is the only user of ``httpx`` (and of ``tenacity``, for the retry loop). Upstreams
call ``HttpPool.get``; what comes back is a 2xx response, or a ``RelayError``:

- connect errors, resets and truncated bodies, and 429 / 502 / 503 / 504 answers are retried
  with capped exponential backoff and jitter (a ``Retry-After`` header, capped, wins over the
  computed wait); after the last try they become 503 (could not connect, 429, 503), 502 (bad
  gateway, broken transfer) or 504 (timeouts);
- a read timeout is not retried: a server that is slow once is likely slow again, and retrying
  would multiply the client's wait;
- a 4xx is not retried: it goes to the caller's ``on_client_error`` (a BossDB JSON error keeps its
  status and code across a chain; DVID's plain-text errors are mapped by the DVID upstream);
- the whole call, retries included, is bounded by ``total`` seconds.
One ``httpx.AsyncClient`` serves each upstream host (keep-alive, HTTP/1.1, bounded
connections); the pool lives as long as the app and is closed with it.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import urlsplit

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_exponential_jitter

from ..errors import RelayError, UpstreamError, UpstreamTimeout, UpstreamUnavailable

__all__ = ["HttpPool", "HttpSettings", "PassThroughError", "boss_error_or", "describe",
           "json_body"]

_RETRY_STATUSES = frozenset({429, 502, 503, 504})
_MAX_ERROR_TEXT = 200


@dataclass(frozen=True, slots=True)
class HttpSettings:
    connect: float = 5.0        # seconds to establish a connection
    read: float = 30.0          # seconds between bytes
    total: float = 60.0         # seconds for the whole call, retries included
    retries: int = 3            # extra tries after the first
    backoff: float = 0.2        # first wait, doubled per try, with jitter
    backoff_max: float = 5.0    # cap on one wait (and on Retry-After)
    max_connections: int = 32   # per upstream host


class PassThroughError(RelayError):
    """An upstream's own BossDB error, re-raised with its status and code."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class _Retryable(Exception):
    """A failure worth another try; carries the error to raise if none is left."""

    def __init__(self, error: RelayError, retry_after: float | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.retry_after = retry_after


def _retry_after(response: httpx.Response) -> float | None:
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


def _text(response: httpx.Response) -> str:
    text = response.text.strip().replace("\n", " ")
    return text[:_MAX_ERROR_TEXT]


def boss_error_or(response: httpx.Response, fallback: Callable[[httpx.Response], RelayError]
                  ) -> RelayError:
    """The BossDB JSON error in ``response``, re-raised as is, or ``fallback(response)``."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return fallback(response)
    if (isinstance(body, dict) and isinstance(body.get("status"), int)
            and isinstance(body.get("code"), int) and 400 <= body["status"] < 600):
        return PassThroughError(body["status"], body["code"], str(body.get("message", "")))
    return fallback(response)


def _default_client_error(response: httpx.Response) -> RelayError:
    return boss_error_or(
        response,
        lambda r: UpstreamError(f"upstream answered {r.status_code}: {_text(r)}"),
    )


def _status_error(response: httpx.Response, where: str) -> RelayError:
    status = response.status_code
    if status in (429, 503):
        return UpstreamUnavailable(f"{where} is unavailable ({status})")
    if status == 504:
        return UpstreamTimeout(f"{where} timed out upstream (504)")
    return UpstreamError(f"{where} failed ({status})")


class HttpPool:
    """One client per upstream host, shared by every source that reads from it."""

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._clients: dict[tuple[str, str, HttpSettings], httpx.AsyncClient] = {}
        self._transport = transport  # tests inject faults here

    def _client(self, url: str, settings: HttpSettings) -> httpx.AsyncClient:
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc, settings)
        client = self._clients.get(key)
        if client is None:
            client = httpx.AsyncClient(
                timeout=httpx.Timeout(settings.read, connect=settings.connect),
                limits=httpx.Limits(max_connections=settings.max_connections,
                                    max_keepalive_connections=settings.max_connections),
                http1=True,
                http2=False,
                follow_redirects=False,
                transport=self._transport,
                trust_env=False,
            )
            self._clients[key] = client
        return client

    async def get(
        self,
        url: str,
        settings: HttpSettings,
        *,
        where: str,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        on_client_error: Callable[[httpx.Response], RelayError] = _default_client_error,
    ) -> httpx.Response:
        """GET ``url``; a 2xx response with its body read, or a RelayError.

        ``where`` names the upstream in error messages: never a URL with credentials in it.
        """
        client = self._client(url, settings)

        async def attempt() -> httpx.Response:
            try:
                response = await client.get(url, headers=headers, params=params)
            except httpx.TimeoutException as exc:
                if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
                    raise _Retryable(UpstreamUnavailable(f"cannot connect to {where}")) from exc
                raise UpstreamTimeout(f"{where} did not answer in time") from exc
            except httpx.ConnectError as exc:
                raise _Retryable(UpstreamUnavailable(f"cannot connect to {where}")) from exc
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
                raise _Retryable(UpstreamError(f"{where} broke off the transfer")) from exc
            except httpx.HTTPError as exc:
                raise UpstreamError(f"cannot read from {where}: {type(exc).__name__}") from exc
            if response.status_code in _RETRY_STATUSES:
                raise _Retryable(_status_error(response, where), _retry_after(response))
            if 400 <= response.status_code < 500:
                raise on_client_error(response)
            if not 200 <= response.status_code < 300:
                raise UpstreamError(f"{where} failed ({response.status_code})")
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
            raise exc.error from exc
        except TimeoutError as exc:
            raise UpstreamTimeout(f"{where} did not answer within {settings.total:g} s") from exc
        _unreachable()

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()


def _unreachable() -> NoReturn:  # pragma: no cover - AsyncRetrying returns or raises
    raise AssertionError("retry loop ended without a result")


def json_body(response: httpx.Response, where: str) -> Any:
    """The JSON of a 2xx response, or a 502: a 200 with an HTML body is an upstream fault."""
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UpstreamError(f"{where} sent something that is not JSON") from exc
