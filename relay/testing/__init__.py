"""Conformance suites every implementation of an interface must pass, shipped with the package
(the ``zarr.testing`` pattern) so third-party upstreams and tiers can run them too.

    from relay.testing import UpstreamSuite

    class TestMyStore(UpstreamSuite):
        kind = "mystore"
        def write_store(self, path, levels, voxel_size, offset): ...  # returns source settings
"""

from .cache_suite import CacheTierSuite
from .upstream_suite import UpstreamSuite, ground_truth

__all__ = ["CacheTierSuite", "UpstreamSuite", "ground_truth"]
