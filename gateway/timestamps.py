"""Epoch seconds (the store's clock) to protobuf Timestamps and RFC 3339 text."""

from __future__ import annotations

import datetime as dt

from google.protobuf import timestamp_pb2

__all__ = ["rfc3339", "timestamp", "utc_text"]


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    """A Timestamp for UNIX ``seconds``."""
    whole, nanos = divmod(int(seconds * 1e9), 1_000_000_000)
    return timestamp_pb2.Timestamp(seconds=whole, nanos=nanos)


def rfc3339(seconds: float) -> str:
    """RFC 3339 UTC text for UNIX ``seconds``, as protobuf JSON writes it."""
    return str(timestamp(seconds).ToJsonString())


def utc_text(seconds: float, *, millis: bool = False) -> str:
    """UTC text for people (commands, logs, audit details): ``2026-11-27T09:55:18Z``, or with
    ``millis`` ``2026-11-27T09:55:18.824Z``."""
    at = dt.datetime.fromtimestamp(seconds, dt.UTC)
    return at.isoformat(timespec="milliseconds" if millis else "seconds")[:-6] + "Z"
