"""Every metric the alert rules, recording rules and dashboard query is one the gateway exports
(a misspelt name in a PromQL expression is not an error: the panel or alert just stays empty)."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.metrics import GatewayMetrics

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
# Names of series, not of recording rules (tongban:...: a colon) or label values.
NAME = re.compile(r"(?<![\w:])((?:tongban|grpc_server)_[a-z0-9_]+)(?![\w:])")


def exported() -> set[str]:
    # A family with labels and no child yet has no samples: name its series from its type.
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
    names = set()
    for family in GatewayMetrics().registry.collect():
        names.add(family.name)
        names.update(family.name + s for s in suffixes.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


def test_monitoring_queries_only_exported_metrics() -> None:
    files = [
        *MONITORING.glob("rules/*.yml"),
        MONITORING / "grafana" / "tongban-dashboard.json",
    ]
    used = {m for f in files for m in NAME.findall(f.read_text("utf-8"))}
    assert "tongban_store_purged_rows_total" in used
    assert len(used) > 15
    assert used - exported() == set()
