"""Cache tiers: memory (byte-bounded LRU), disk (diskcache), and the tiered read-through."""

from .base import CacheTier
from .disk import DiskTier
from .memory import MemoryTier
from .tiered import TieredCache

__all__ = ["CacheTier", "DiskTier", "MemoryTier", "TieredCache"]
