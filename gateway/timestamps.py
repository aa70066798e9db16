"""Epoch seconds (the store's clock) to protobuf Timestamps and RFC 3339 text."""

from __future__ import annotations

from google.protobuf import timestamp_pb2

__all__ = ["rfc3339", "timestamp"]


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    """A Timestamp for UNIX ``seconds``."""
    whole, nanos = divmod(int(seconds * 1e9), 1_000_000_000)
    return timestamp_pb2.Timestamp(seconds=whole, nanos=nanos)


def rfc3339(seconds: float) -> str:
    """RFC 3339 UTC text for UNIX ``seconds``, as protobuf JSON writes it."""
    return str(timestamp(seconds).ToJsonString())
