"""The BossDB dialect's resource paths, relative to ``/v1/``, built in one place: the metadata
service asks BossDB-speaking upstreams for them, and the boss upstream reads a channel's
description from them. Names are checked before they get here (``[A-Za-z0-9_-]``)."""

from __future__ import annotations

__all__ = ["channel", "channels", "collection", "collections", "coord", "coords", "downsample",
           "experiment", "experiments"]


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
