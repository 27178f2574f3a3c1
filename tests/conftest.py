import pytest

pytest.register_assert_rewrite("relay.testing")
