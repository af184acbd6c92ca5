"""What background computations share, without Qt: a job that notices its cancel event raises Cancelled."""

from __future__ import annotations


class Cancelled(Exception):
    """A job stopped because its cancel event was set."""
