"""Cache tiers: memory (byte-bounded LRU), disk (diskcache), the fleet's shared Redis, and the
tiered read-through."""

from .base import CacheTier
from .disk import DiskTier
from .lru import SizedLRU
from .memory import MemoryTier
from .redis import RedisTier
from .tiered import TieredCache

__all__ = ["CacheTier", "DiskTier", "MemoryTier", "RedisTier", "SizedLRU", "TieredCache"]
