"""``tongban cases trace EXCHANGE_ID``: where one case is and how it got there, from the store.

For an operator answering "where is my application?": the case (never its personal data: no
names, no ID numbers), then one timeline of its status events, its deliveries (to whom, state,
attempts, last error) and its audit entries, oldest first.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any

from .cli_ops import read_store
from .cli_serve import read_settings
from .services.trace import read_trace
from .store.reads import AuditRecord, EventRecord, OutboxRecord
from .timestamps import utc_text

__all__ = ["add_cases_command"]


def _when(seconds: float) -> str:
    return utc_text(seconds, millis=True)


def _delivery(r: OutboxRecord) -> str:
    what = "the case" if r.kind == "case" else f"status event {r.event_seq}"
    state = {
        "delivered": f"delivered at {_when(r.delivered_at)}" if r.delivered_at else "delivered",
        "dead": f"dead letter since {_when(r.dead_at)}" if r.dead_at else "dead letter",
        "pending": f"pending, next attempt {_when(r.next_attempt_at)}",
    }.get(r.state, r.state)
    tail = f"; last error: {r.last_error}" if r.last_error else ""
    replays = f", replayed {r.replays}x" if r.replays else ""
    return (
        f"delivery #{r.id} of {what} to {r.target_partner} ({r.target_city}): {state}, "
        f"{r.attempts} attempt(s){replays}{tail}"
    )


def timeline(
    events: list[EventRecord], rows: list[OutboxRecord], entries: list[AuditRecord]
) -> list[tuple[float, str, str]]:
    """(time, source, text) of everything that happened to the case, oldest first."""
    out: list[tuple[float, str, str]] = []
    for e in events:
        note = f": {e.note}" if e.note else ""
        late = " (recorded late: the status stayed)" if e.late else ""
        out.append((e.occurred_at, "status", f"{e.status} reported by {e.reported_by}{late}{note}"))
    for r in rows:
        out.append((r.created_at, "outbox", _delivery(r)))
    for a in entries:
        detail = f" ({a.detail})" if a.detail else ""
        out.append((a.ts, "audit", f"{a.action} by {a.actor}: {a.outcome}{detail} [#{a.seq}]"))
    return sorted(out, key=lambda x: x[0])


def cmd_cases_trace(args: argparse.Namespace) -> int:
    """Print one case's state and timeline."""
    settings = read_settings(args.config)
    if settings is None:
        return 2
    read = read_store(settings, "store", lambda reader: [read_trace(reader, args.exchange_id)])
    if read is None:
        return 2
    found = read[0]
    if found is None:
        print(
            f"error: no case {args.exchange_id} in the store (never submitted here, or purged "
            "by retention)",
            file=sys.stderr,
        )
        return 1
    case, events, rows, entries = found.case, found.events, found.deliveries, found.audit
    facts: dict[str, Any] = {k: v for k, v in asdict(case).items() if k not in ("canonical", "seq")}
    if args.json:
        print(
            json.dumps(
                {
                    **facts,
                    "events": [asdict(e) for e in events],
                    "deliveries": [asdict(r) for r in rows],
                    "audit": [asdict(a) for a in entries],
                    "audit_archived_through": found.audit_archived_through,
                },
                ensure_ascii=False,
            )
        )
        return 0
    print(f"exchange {case.exchange_id}  case number {case.case_number}")
    print(
        f"  submitted by {case.submitter} ({case.receiving_city}) for {case.handling_city} at "
        f"{_when(case.submitted_at)}; last change {_when(case.updated_at)}"
    )
    print(f"  status {case.status}, {case.delivery_state}")
    print(f"  mappings {case.mapping_versions}")
    for at, source, text in timeline(events, rows, entries):
        print(f"{_when(at)}  {source:<6}  {text}")
    if found.audit_archived_through:
        print(
            f"  (its audit entries among 1-{found.audit_archived_through} are in archive files: "
            "tongban audit archive)"
        )
    return 0


def add_cases_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``cases``."""
    p = sub.add_parser("cases", help="one case's state and history, from the store")
    cs = p.add_subparsers(dest="cases_command", required=True, metavar="COMMAND")
    tr = cs.add_parser(
        "trace",
        help="a case's status, then its status events, deliveries and audit entries in time "
        "order (no personal data)",
    )
    tr.add_argument("exchange_id")
    tr.add_argument("--json", action="store_true", help="one JSON object")
    tr.add_argument("--config", help="TOML settings file")
    tr.set_defaults(func=cmd_cases_trace)
