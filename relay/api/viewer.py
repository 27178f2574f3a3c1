"""A viewer in the box: ``GET /`` lists what the relay serves, with snippets to copy and an
"open in neuroglancer" link per experiment and per channel; the link opens neuroglancer's own
client, served by the relay from the installed ``neuroglancer`` package (no internet), with
the layers already configured to read the relay's precomputed dialect.

    GET /                          the index page (``?token=T``: see below)
    GET /viewer/v/relay/…          neuroglancer's client (the package's static files)
    GET /viewer/events/relay       a quiet event stream for the client (see ``events``)

The client in the package is the one its Python server serves: it takes its state from the
URL's ``#!{…}`` and, beside it, keeps an event stream open to a Python server at
``…/events/{token}``. The relay answers that stream with nothing but keep-alives, so the
client shows no "disconnected" banner and runs on the URL's state alone.

With ``server.tokens`` a browser cannot add an ``Authorization`` header to what it fetches;
it opens ``/?token=T`` once, which sets an HTTP-only, same-site cookie that the relay accepts
instead (``AuthMiddleware``) for every GET from that browser, the viewer's chunk reads included.
"""

from __future__ import annotations

import asyncio
import html
import json
from collections.abc import AsyncIterator
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from ..catalog import Catalog, Channel
from ..errors import RelayError
from ..model import ChannelRef
from .common import caller_token, catalog_of
from .middleware import TOKEN_COOKIE

__all__ = ["VIEWER", "client_directory", "index", "neuroglancer_state", "viewer_routes"]

#: where neuroglancer's client is served (its code finds its server's URLs from this path)
VIEWER = "/viewer/v/relay/"
#: the most channels the index describes (a wildcard source may lead to a whole BossDB)
MAX_LISTED = 60
_KEEPALIVE_SECONDS = 15.0


def client_directory() -> Path:
    """neuroglancer's built client, as the installed package holds it."""
    return Path(str(files("neuroglancer.static") / "client"))


def neuroglancer_state(base: str, channels: list[Channel]) -> dict[str, Any]:
    """A viewer state showing ``channels`` (images first, then segmentations) from the relay
    at ``base``, centred on the first one's middle."""
    first = channels[0].info
    to_m = {"nanometers": 1e-9, "micrometers": 1e-6, "millimeters": 1e-3,
            "centimeters": 1e-2}.get(first.voxel_unit, 1e-9)
    level = first.levels[0]
    middle = [(a + b) / 2 for a, b in zip(level.bounds.start, level.bounds.stop, strict=True)]
    layers = []
    for channel in sorted(channels, key=lambda c: c.info.type == "annotation"):
        ref = channel.ref
        source = f"precomputed://{base}/precomputed/{ref.collection}/{ref.experiment}/{ref.channel}"
        layers.append({"type": "segmentation" if channel.info.type == "annotation" else "image",
                       "source": source, "name": ref.channel})
    return {
        "dimensions": {axis: [size * to_m, "m"]
                       for axis, size in zip("xyz", level.voxel_size, strict=True)},
        "position": middle,
        "crossSectionScale": 1,
        "projectionScale": 2 * max(level.bounds.size.x, level.bounds.size.y),
        "layers": layers,
        "layout": "4panel" if any(c.info.type == "annotation" for c in channels) else "xy",
    }


def _viewer_link(base: str, channels: list[Channel]) -> str:
    state = json.dumps(neuroglancer_state(base, channels), separators=(",", ":"))
    return VIEWER + "#!" + quote(state, safe="")


async def _listed(catalog: Catalog, token: str | None) -> tuple[
        dict[tuple[str, str], list[Channel]], list[str]]:
    """The channels the index describes, by experiment, and problems met on the way."""
    found: dict[tuple[str, str], list[Channel]] = {}
    problems: list[str] = []
    count = 0
    try:
        collections = await catalog.collections(token)
    except RelayError as exc:
        return found, [f"collections: {exc.message}"]
    for c in collections:
        try:
            experiments = await catalog.experiments(c, token)
        except RelayError as exc:
            problems.append(f"{c}: {exc.message}")
            continue
        for e in experiments:
            try:
                names = await catalog.channels(c, e, token)
            except RelayError as exc:
                problems.append(f"{c}/{e}: {exc.message}")
                continue
            for ch in names:
                if count >= MAX_LISTED:
                    problems.append(f"more channels than the {MAX_LISTED} listed here")
                    return found, problems
                try:
                    channel = await catalog.channel(ChannelRef(c, e, ch), token)
                except RelayError as exc:
                    problems.append(f"{c}/{e}/{ch}: {exc.message}")
                    continue
                found.setdefault((c, e), []).append(channel)
                count += 1
    return found, problems


_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:70em;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em}table{border-collapse:collapse;width:100%}
td,th{border-bottom:1px solid #ddd;padding:.35em .5em;text-align:left;vertical-align:top}
code,pre{background:#f4f4f4;font-size:12.5px}pre{padding:.6em;overflow:auto}
a.open{font-weight:600}.muted{color:#777}
"""


#: the index page names no other site, and the URL it was opened with may have held a token
_NO_REFERRER = {"Referrer-Policy": "no-referrer"}


async def index(request: Request) -> Response:
    """The catalog, with snippets and viewer links, as the caller sees it. Opened as
    ``/?token=T`` (``AuthMiddleware`` has checked T), it sets the browser's cookie and
    redirects to itself without the token, so the token stays out of the address bar, the
    browser's history and bookmarks, and any ``Referer``."""
    given = request.query_params.get("token")
    if given:
        rest = urlencode([(k, v) for k, v in request.query_params.multi_items()
                          if k != "token"])
        redirect = RedirectResponse("/" + (f"?{rest}" if rest else ""), status_code=303,
                                    headers={**_NO_REFERRER, "Cache-Control": "no-store"})
        redirect.set_cookie(TOKEN_COOKIE, given, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        return redirect
    base = str(request.base_url).rstrip("/")
    host = request.url.netloc
    token = caller_token(request)
    found, problems = await _listed(catalog_of(request), token)
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>relay at {esc(host)}"
             f"</title><style>{_STYLE}</style></head><body>",
             f"<h1>relay at {esc(host)}</h1>",
             "<p>A caching relay speaking the BossDB REST dialect and neuroglancer's precomputed "
             "format. <a href='/docs'>API documentation</a> · <a href='/metrics'>metrics</a> · "
             "<a href='/stats'>cache statistics</a></p>"]
    if not found:
        parts.append("<p class='muted'>No channels to list.</p>")
    for (c, e), channels in found.items():
        link = _viewer_link(base, channels)
        parts.append(f"<h2>{esc(c)} / {esc(e)} <a class='open' href='{esc(link)}'>open in "
                     "neuroglancer</a></h2>")
        parts.append("<table><tr><th>channel</th><th>type</th><th>extent (x, y, z)</th>"
                     "<th>voxel size</th><th>levels</th><th></th></tr>")
        for channel in channels:
            info = channel.info
            level = info.levels[0]
            stop, start = level.bounds.stop, level.bounds.start
            derived = (f" ({len(info.levels) - channel.pyramid.stored} derived)"
                       if channel.pyramid is not None else "")
            one = _viewer_link(base, [channel])
            parts.append(
                f"<tr><td><b>{esc(channel.ref.channel)}</b></td>"
                f"<td>{esc(info.dtype.name)} {esc(info.type)}</td>"
                f"<td>{start.x}:{stop.x}, {start.y}:{stop.y}, {start.z}:{stop.z}</td>"
                f"<td>{' × '.join(f'{v:g}' for v in level.voxel_size)} {esc(info.voxel_unit)}"
                f"</td><td>{len(info.levels)}{derived}</td>"
                f"<td><a href='{esc(one)}'>open</a></td></tr>")
        parts.append("</table>")
        first = channels[0]
        ch, lv = first.ref.channel, first.info.levels[0]
        x1, y1, z1 = (min(lv.bounds.start[a] + 512 if a < 2 else lv.bounds.start[a] + 16,
                          lv.bounds.stop[a]) for a in range(3))
        x0, y0, z0 = lv.bounds.start
        parts.append(
            "<pre>"
            + esc(f"# curl: a cutout as numpy (zlib of np.save)\n"
                  f"curl -s -H 'Accept: application/npygz' "
                  f"{base}/v1/cutout/{c}/{e}/{ch}/0/{x0}:{x1}/{y0}:{y1}/{z0}:{z1}/ -o cut.npygz\n\n"
                  f"# intern\n"
                  f"from intern.remote.boss import BossRemote\n"
                  f"remote = BossRemote({{'protocol': '{request.url.scheme}', 'host': '{host}',"
                  f" 'token': 'public'}})\n"
                  f"data = remote.get_cutout(remote.get_channel('{ch}', '{c}', '{e}'), 0,"
                  f" [{x0}, {x1}], [{y0}, {y1}], [{z0}, {z1}])\n\n"
                  f"# cloud-volume\n"
                  f"from cloudvolume import CloudVolume\n"
                  f"vol = CloudVolume('precomputed://{base}/precomputed/{c}/{e}/{ch}')\n"
                  f"data = vol[{x0}:{x1}, {y0}:{y1}, {z0}:{z1}]")
            + "</pre>")
    cache = request.app.state.cache
    if cache is not None:
        rows = "".join(
            f"<tr><td>{esc(tier)}</td><td>{stats.get('bytes', 0) / 1e6:.1f} MB"
            + (f" of {stats['budget_bytes'] / 1e6:.0f} MB" if "budget_bytes" in stats else "")
            + f"</td><td>{stats.get('entries', '')}</td></tr>"
            for tier, stats in cache.tier_stats().items())
        parts.append("<h2>Cache</h2><table><tr><th>tier</th><th>size</th><th>entries</th>"
                     f"</tr>{rows}</table>")
    if problems:
        parts.append("<h2>Not listed</h2><ul>"
                     + "".join(f"<li>{esc(p)}</li>" for p in problems) + "</ul>")
    parts.append("</body></html>")
    return HTMLResponse("".join(parts), headers=_NO_REFERRER)


async def events(request: Request) -> StreamingResponse:
    """A Python-server event stream that never has news: keep-alive comments only."""

    async def quiet() -> AsyncIterator[bytes]:
        while True:
            yield b": relay\n\n"
            await asyncio.sleep(_KEEPALIVE_SECONDS)

    return StreamingResponse(quiet(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


def viewer_routes() -> list[BaseRoute]:
    """The index page, the client's files and its event stream (plain Starlette routes: not
    part of the documented API)."""
    from starlette.routing import Route

    return [Route("/", index), Route("/viewer/events/relay", events),
            Mount(VIEWER.rstrip("/"), app=StaticFiles(directory=client_directory(), html=True))]
