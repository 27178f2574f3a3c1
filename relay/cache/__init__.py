"""Cache tiers: memory (byte-bounded LRU), disk (diskcache), and the tiered read-through."""

from .base import CacheTier
from .disk import DiskTier
from .lru import SizedLRU
from .memory import MemoryTier
from .tiered import TieredCache

__all__ = ["CacheTier", "DiskTier", "MemoryTier", "SizedLRU", "TieredCache"]
