"""The benchmark harness (``make bench``); see run.py."""
