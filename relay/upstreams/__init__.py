"""Upstream stores: one plugin per store kind, all behind ``relay.upstreams.base.Upstream``."""

from ..model import ChannelInfo, ChannelRef, Level
from .base import Upstream
from .kinds import registry

__all__ = ["ChannelInfo", "ChannelRef", "Level", "Upstream", "registry"]
