"""relay: a caching REST relay for volumetric neuroscience data, speaking the BossDB dialect."""

__version__ = "0.1.0"

__all__ = ["__version__"]
