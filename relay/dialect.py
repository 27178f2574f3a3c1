"""The BossDB dialect's resource paths, relative to ``/v1/``, built in one place: the metadata
service asks BossDB-speaking upstreams for them, and the boss upstream reads a channel's
description from them. Names are checked before they get here (``[A-Za-z0-9_-]``)."""

from __future__ import annotations

__all__ = ["boundingbox", "channel", "channels", "collection", "collections", "coord", "coords",
           "downsample", "experiment", "experiments", "meta", "reserve"]


def collections() -> str:
    return "collection/"


def collection(c: str) -> str:
    return f"collection/{c}/"


def experiments(c: str) -> str:
    return f"collection/{c}/experiment/"


def experiment(c: str, e: str) -> str:
    return f"collection/{c}/experiment/{e}/"


def channels(c: str, e: str) -> str:
    return f"collection/{c}/experiment/{e}/channel/"


def channel(c: str, e: str, ch: str) -> str:
    return f"collection/{c}/experiment/{e}/channel/{ch}/"


def coords() -> str:
    return "coord/"


def coord(name: str) -> str:
    return f"coord/{name}/"


def downsample(c: str, e: str, ch: str) -> str:
    return f"downsample/{c}/{e}/{ch}/"


def meta(names: tuple[str, ...], query: str = "") -> str:
    """A collection's, experiment's or channel's metadata key/values; ``query`` encoded."""
    return "meta/" + "".join(f"{name}/" for name in names) + (f"?{query}" if query else "")


def reserve(c: str, e: str, ch: str, count: int) -> str:
    return f"reserve/{c}/{e}/{ch}/{count}/"


def boundingbox(c: str, e: str, ch: str, resolution: int, label: int, kind: str) -> str:
    return f"boundingbox/{c}/{e}/{ch}/{resolution}/{label}/?type={kind}"
