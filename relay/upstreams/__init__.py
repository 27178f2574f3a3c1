"""Upstream stores: one plugin per store kind, all behind ``relay.upstreams.base.Upstream``."""

from .base import ChannelInfo, ChannelRef, Level, Upstream, registry

__all__ = ["ChannelInfo", "ChannelRef", "Level", "Upstream", "registry"]
