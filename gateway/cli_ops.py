"""``tongban db upgrade|backup|purge``, ``audit verify|archive``, ``outbox status`` and ``dead-letters
list|show|replay``: operator commands that work on the store named by the configuration, whether
or not a gateway is running."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from .cli_audit import add_audit_signing_commands
from .cli_serve import read_settings
from .errors import GatewayError
from .services.dead_letters import DeadLetterService
from .services.delivery import LIVE_SECONDS
from .services.replicas import Replica, disagreements
from .services.retention import RetentionService
from .settings import Settings
from .store.backup import BackupError, backup_sqlite
from .store.engine import current_revision
from .store.reads import GatewaySeen, StoreReader
from .store.retention import PURGED, describe
from .store.store import Store
from .timestamps import utc_text

__all__ = ["add_ops_commands"]

T = TypeVar("T")


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    """Apply migrations to the configured store."""
    settings = read_settings(args.config)
    if settings is None:
        return 2
    store = Store(settings.store.effective_url, keyring=settings.store.keyring)
    try:
        before = current_revision(store.engine)
        store.migrate()
        after = current_revision(store.engine)
    except SQLAlchemyError as exc:
        print(f"error: cannot migrate the store: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        store.dispose()
    print(f"store at revision {after} (was {before or 'empty'})")
    return 0


_KEPT = {
    "requests": "idempotency records",
    "outbox": "delivered outbox rows",
    "cases": "cases",
    "audit_checkpoints": "signed audit checkpoints (this chain's and the peers' witnessed)",
}


@contextlib.asynccontextmanager
async def writing_store(settings: Settings) -> AsyncIterator[Store]:
    """The configured store with its writer running (a command that writes), stopped after."""
    store = Store(settings.store.effective_url, keyring=settings.store.keyring)
    store.start()
    try:
        yield store
    finally:
        await store.stop()


async def _purge(args: argparse.Namespace) -> int:
    settings = read_settings(args.config)
    if settings is None:
        return 2
    async with writing_store(settings) as store:
        svc = RetentionService(settings.retention, store)
        if not svc.enabled:
            print("retention keeps everything (retention.*_days are all 0): nothing to purge")
            return 0
        try:
            report = await (svc.dry_run() if args.dry_run else svc.purge("cli"))
        except SQLAlchemyError as exc:
            print(f"error: cannot purge the store: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
    if report.skipped:
        print("another gateway is purging the store now; nothing done", file=sys.stderr)
        return 1
    if args.json:
        print(
            json.dumps(
                {
                    "dry_run": args.dry_run,
                    "cutoffs": {t: _when(c) for t, c in report.cuts.items()},
                    "deleted": report.deleted,
                }
            )
        )
        return 0
    verb = "would purge" if args.dry_run else "purged"
    for table, cut in report.cuts.items():
        n, events = report.deleted.get(table, 0), report.deleted.get("events", 0)
        print(f"{verb} {describe(table, n, cut, events)}")
    kept = [_KEPT[t] for t in (*PURGED, "audit_checkpoints") if t not in report.cuts]
    if kept:
        print(f"kept for ever: {', '.join(kept)}")
    return 0


def cmd_db_backup(args: argparse.Namespace) -> int:
    """Copy the embedded store as of now, while gateways write to it; check the copy."""
    settings = read_settings(args.config)
    if settings is None:
        return 2
    if not settings.store.is_sqlite:
        print(
            "error: the store is PostgreSQL: back it up with pg_dump or the server's own "
            "backups (docs/operations.md#backups)",
            file=sys.stderr,
        )
        return 2
    db = Path(make_url(settings.store.effective_url).database or "")
    try:
        keys = settings.audit.trusted_public_keys
        r = backup_sqlite(db, Path(args.dest), replace=args.force, keys=keys)
    except BackupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(
            json.dumps(
                {**dataclasses.asdict(r), "path": str(r.path), "seconds": round(r.seconds, 3)}
            )
        )
        return 0
    print(
        f"backed up {db} to {r.path} in {r.seconds:.2f}s ({r.bytes / 1e6:.1f} MB): {r.cases} "
        f"cases, {r.pending} deliveries pending, {r.dead_letters} dead letters; integrity ok, "
        f"audit chain intact ({r.audit_entries} entries"
        + (
            f", {r.checkpoints} signed checkpoint{'s' * (r.checkpoints != 1)} verified"
            if r.checkpoints
            else ""
        )
        + ")"
    )
    return 0


def cmd_db_purge(args: argparse.Namespace) -> int:
    """Purge what retention no longer keeps (or, with --dry-run, count it)."""
    return asyncio.run(_purge(args))


def _when(seconds: float | None) -> str:
    return "-" if seconds is None else utc_text(seconds)


async def _dead(args: argparse.Namespace) -> int:
    settings = read_settings(args.config)
    if settings is None:
        return 2
    async with writing_store(settings) as store:
        return await _dead_command(args, DeadLetterService(store))


async def _dead_command(args: argparse.Namespace, svc: DeadLetterService) -> int:
    try:
        if args.dl_command == "list":
            rows, _ = await svc.page(args.limit, "")
            if args.json:
                print(json.dumps([_row(r) for r in rows], ensure_ascii=False))
            else:
                for r in rows:
                    print(
                        f"{r.id:>8}  {r.kind:<6} {r.target_city}  {r.exchange_id}  attempts={r.attempts}"
                        f"  dead={_when(r.dead_at)}  {r.last_error[:80]}"
                    )
                print(f"{len(rows)} dead letter(s)")
        elif args.dl_command == "show":
            print(json.dumps(_row(await svc.get(args.id)), ensure_ascii=False, indent=2))
        else:
            ids = None if args.all else args.ids
            if not args.all and not args.ids:
                print("error: give ids or --all", file=sys.stderr)
                return 2
            replayed = await svc.replay("cli", ids)
            print(f"replayed {len(replayed)}: {' '.join(map(str, replayed))}")
        return 0
    except GatewayError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1


def _row(r: Any) -> dict[str, Any]:
    return {
        "id": r.id,
        "exchange_id": r.exchange_id,
        "kind": r.kind,
        "target_partner": r.target_partner,
        "target_city": r.target_city,
        "attempts": r.attempts,
        "reason": r.last_error,
        "created_at": _when(r.created_at),
        "dead_at": _when(r.dead_at),
        "replays": r.replays,
    }


def cmd_dead_letters(args: argparse.Namespace) -> int:
    """Run a dead-letter command."""
    return asyncio.run(_dead(args))


def cmd_outbox_status(args: argparse.Namespace) -> int:
    """What waits in the outbox, partner by partner."""
    settings = read_settings(args.config)
    if settings is None:
        return 2
    now = time.time()
    read = read_store(settings, "outbox", lambda r: (r.backlog(now), r.gateways()))
    if read is None:
        return 2
    rows, gateways = read
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "partner": r.partner,
                        "city": _city(settings, r.partner),
                        "pending": r.pending,
                        "due": r.due,
                        "waiting": r.waiting,
                        "held": r.held,
                        "next_attempt_at": _when(r.next_attempt_at),
                        "oldest_created_at": _when(r.oldest_created_at),
                        "oldest_attempts": r.oldest_attempts,
                        "last_error": r.last_error,
                    }
                    for r in rows
                ],
                ensure_ascii=False,
            )
        )
        return 0
    print(
        f"{'partner':<12} {'city':<6} {'pending':>8} {'due':>6} {'waiting':>8} {'held':>5}"
        f"  {'next attempt':<12} {'oldest':>8} {'attempts':>8}  last error"
    )
    for r in rows:
        nxt = f"in {r.next_attempt_at - now:.1f}s" if r.next_attempt_at is not None else "-"
        age = f"{now - r.oldest_created_at:.0f}s" if r.oldest_created_at is not None else "-"
        print(
            f"{r.partner:<12} {_city(settings, r.partner):<6} {r.pending:>8} {r.due:>6}"
            f" {r.waiting:>8} {r.held:>5}  {nxt:<12} {age:>8} {r.oldest_attempts:>8}"
            f"  {r.last_error[:80]}"
        )
    print(f"{sum(r.pending for r in rows)} pending for {len(rows)} partner(s)")
    live = [g for g in gateways if now - g.seen_at < LIVE_SECONDS]

    def seen(group: list[GatewaySeen]) -> str:
        return "".join(f"; {g.host} pid {g.pid}, seen {now - g.seen_at:.0f}s ago" for g in group)

    delivering = [g for g in live if g.delivers]
    print(f"{len(delivering)} gateway process(es) delivering{seen(delivering)}")
    serving = [g for g in live if not g.delivers]
    if serving:
        print(f"{len(serving)} gateway process(es) serving, not delivering{seen(serving)}")
    differ = disagreements([Replica.of(g) for g in live])
    for setting, values in differ.items():
        print(f"settings differ, {setting}: " + "; ".join(values))
    return 0


def cmd_gateways(args: argparse.Namespace) -> int:
    """The gateway processes serving from the store and what each runs that replicas must
    share; exit 1 while they do not all share it (a rollout's check before it moves on)."""
    settings = read_settings(args.config)
    if settings is None:
        return 2
    now = time.time()
    found = read_store(settings, "gateways", lambda r: r.gateways())
    if found is None:
        return 2
    seen = [(g, Replica.of(g)) for g in found]
    live = [(g, r) for g, r in seen if now - g.seen_at < LIVE_SECONDS]
    shown = seen if args.all else live
    differ = disagreements([r for _, r in live])
    if args.json:
        print(
            json.dumps(
                {
                    "gateways": [
                        {
                            "owner": g.owner,
                            "host": g.host,
                            "pid": g.pid,
                            "delivers": g.delivers,
                            "live": now - g.seen_at < LIVE_SECONDS,
                            "started_at": utc_text(g.started_at),
                            "seen_at": utc_text(g.seen_at, millis=True),
                            "settings": r.settings,
                            "inboxes": sorted(r.inboxes),
                        }
                        for g, r in shown
                    ],
                    "settings_differ": list(differ),
                },
                ensure_ascii=False,
            )
        )
        return 1 if differ else 0
    for g, r in shown:
        state = "delivering" if g.delivers else "serving, not delivering"
        if now - g.seen_at >= LIVE_SECONDS:
            state += ", not live"
        print(
            f"{g.host} pid {g.pid}: {state}; started {utc_text(g.started_at)},"
            f" seen {now - g.seen_at:.0f}s ago"
        )
        if not r.settings:
            print("  (no settings recorded: a gateway before revision 0011)")
        for key, value in r.settings.items():
            print(f"  {key}: {value}")
        if r.inboxes:  # not compared: which partners' rows it can deliver (or leaves to others)
            print(f"  inboxes known: {', '.join(sorted(r.inboxes))}")
    stale = len(found) - len(live)
    print(
        f"{len(live)} live gateway process(es), {sum(g.delivers for g, _ in live)} delivering"
        + (
            f"; {stale} not seen for {LIVE_SECONDS:.0f}s or more (--all lists them)"
            if stale and not args.all
            else ""
        )
    )
    for setting, values in differ.items():
        print(f"settings differ, {setting}: " + "; ".join(values))
    if not differ and sum(bool(r.settings) for _, r in live) > 1:
        print("the live gateways that recorded them run the settings replicas share alike")
    return 1 if differ else 0


def _city(settings: Settings, partner: str) -> str:
    found = settings.partners.get(partner)
    return found.city if found is not None else "?"


def read_store(settings: Settings, what: str, read: Callable[[StoreReader], T]) -> T | None:
    """``read`` from the configured store; None, once said why, if it cannot be read."""
    store = Store(settings.store.effective_url, keyring=settings.store.keyring)
    try:
        return read(store.reader)
    except SQLAlchemyError as exc:
        print(f"error: cannot read the {what}: {type(exc).__name__}", file=sys.stderr)
        return None
    finally:
        store.dispose()


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Walk the audit chain (and its archive files), checking its signed checkpoints; exit 1 at
    the first broken link or checkpoint."""
    from .audit import ChainReport, SignedCheckpoints, sort_checkpoints, verify_store_chain
    from .cli_audit import external_checkpoints, report_checkpoints, trusted_public_keys
    from .store.audit_archive import ArchivesReport, verify_archives
    from .store.chain_hash import HASH_NAMES
    from .store.checkpoints import stored_checkpoints

    settings = read_settings(args.config)
    if settings is None:
        return 2
    archives = Path(args.archives) if args.archives else None
    if archives is not None and not archives.is_dir():
        print(f"error: --archives {archives}: no such directory", file=sys.stderr)
        return 2
    keys = trusted_public_keys(args.public_key, settings)
    given = external_checkpoints(args.checkpoints)
    if keys is None or given is None:
        return 2

    def verify(
        reader: StoreReader,
    ) -> tuple[
        ChainReport, ArchivesReport | None, SignedCheckpoints, int, tuple[int, float] | None
    ]:
        stored = stored_checkpoints(reader.engine)
        signed = sort_checkpoints([*stored, *given], keys)
        chain = verify_store_chain(reader, signed.trusted)
        # With a signing key: the oldest entry in the store no checkpoint covers, and when it
        # was made (entries a gateway should have signed by now are warned of).
        unsigned = None
        if settings.audit.signing_key is not None:
            first = max(max(signed.trusted, default=0), chain.after) + 1
            unsigned = (first, reader.audit_entry_time(first, time.time()))
        if archives is None:
            return chain, None, signed, len(stored), unsigned
        recorded = {r.file: r.sha256 for r in reader.audit_archives()}
        files = verify_archives(
            archives,
            (chain.after, chain.after_hash),
            recorded,
            signed.trusted,
            chain.after_algorithm,
        )
        return chain, files, signed, len(stored), unsigned

    found = read_store(settings, "audit log", verify)
    if found is None:
        return 2
    report, files, signed, stored, unsigned = found
    archived = report.after
    ok = report.ok and (files is None or files.ok)
    if report.ok:
        since = f" (entries {archived + 1} on; 1-{archived} archived)" if archived else ""
        print(f"audit chain intact: {report.checked} entries in the store{since}")
        switched = f" (since entry {report.switched_at + 1})" if report.switched_at else ""
        print(f"  hashed with {HASH_NAMES[report.algorithm]}{switched}")
    else:
        print(
            f"audit chain BROKEN at entry {report.broken_seq}: {report.reason} "
            f"({report.checked} entries verified before it)"
        )
    if files is not None and files.ok:
        print(f"archives intact: {files.files} files, entries 1-{files.entries}")
        for name in files.ignored:
            print(f"  {name}: not recorded by the store (an archive interrupted), not checked")
    elif files is not None:
        print(f"archives BROKEN: {files.problem} ({files.files} files verified before it)")
    elif archived:
        print(f"entries 1-{archived} are in archive files: check them with --archives DIR")
    counts = (stored, len(given))
    ok = report_checkpoints(signed, counts, report, files is not None, settings, unsigned) and ok
    return 0 if ok else 1


def _archive_dry_run(
    args: argparse.Namespace, settings: Settings, cut: float, per_file: int
) -> int:
    """What an archive up to ``cut`` would move, moving nothing."""
    from .store.audit_archive import archivable_through

    found = read_store(
        settings,
        "audit log",
        lambda reader: (reader.audit_archived()[0], archivable_through(reader.engine, cut)),
    )
    if found is None:
        return 2
    archived, through = found
    n = max(0, through - archived)
    files = -(-n // per_file)
    if args.json:
        print(
            json.dumps(
                {
                    "dry_run": True,
                    "cutoff": utc_text(cut),
                    "archived_upto": archived,
                    "first": archived + 1 if n else None,
                    "last": through if n else None,
                    "entries": n,
                    "files": files,
                }
            )
        )
    elif n:
        print(
            f"would archive entries {archived + 1}-{through} ({n} entries made before "
            f"{utc_text(cut)}) in {files} files of at most {per_file}"
        )
    else:
        print(f"nothing to archive: no entry made before {utc_text(cut)} is still in the store")
    return 0


def cmd_audit_archive(args: argparse.Namespace) -> int:
    """Move audit entries older than the cut-off into archive files."""
    return asyncio.run(_archive(args))


def _cutoff(args: argparse.Namespace, settings: Settings) -> float | None:
    """``--before`` (an ISO 8601 date or time, UTC unless it says), or ``--days`` ago
    (default: ``retention.audit_days``)."""
    if args.before is None:
        days = settings.retention.audit_days if args.days is None else float(args.days)
        return time.time() - days * 86400
    try:
        when = datetime.fromisoformat(args.before)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


async def _archive(args: argparse.Namespace) -> int:
    from .store.audit_archive import ArchiveError, archive_audit

    settings = read_settings(args.config)
    if settings is None:
        return 2
    if args.before is None and args.days is None and settings.retention.audit_days <= 0:
        print("error: give --before or --days (retention.audit_days is 0)", file=sys.stderr)
        return 2
    directory = Path(args.dir) if args.dir else settings.retention.audit_archive_dir
    if directory is None and not args.dry_run:
        print("error: give --dir (retention.audit_archive_dir is not set)", file=sys.stderr)
        return 2
    cut = _cutoff(args, settings)
    if cut is None:
        print(f"error: --before {args.before!r}: not an ISO 8601 date or time", file=sys.stderr)
        return 2
    per_file = settings.retention.audit_entries_per_file if args.per_file is None else args.per_file
    if per_file < 1:
        print("error: --per-file must be at least 1", file=sys.stderr)
        return 2
    if cut > time.time():
        print(f"error: the cut-off {utc_text(cut)} is in the future", file=sys.stderr)
        return 2
    if args.dry_run:
        return _archive_dry_run(args, settings, cut, per_file)
    assert directory is not None
    try:
        async with writing_store(settings) as store:
            files = await archive_audit(store, directory, cut, per_file, "cli")
            archived, _ = await store.read(store.reader.audit_archived)
    except (ArchiveError, OSError, SQLAlchemyError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(
            json.dumps(
                {
                    "cutoff": utc_text(cut),
                    "archived_upto": archived,
                    "files": [
                        {
                            "file": str(f.path),
                            "first": f.first,
                            "last": f.last,
                            "sha256": f.sha256,
                        }
                        for f in files
                    ],
                }
            )
        )
        return 0
    for f in files:
        print(f"archived entries {f.first}-{f.last} to {f.path} (sha256 {f.sha256})")
    entries = sum(f.entries for f in files)
    print(
        f"{entries} entries made before {utc_text(cut)} archived in {len(files)} files; "
        f"the store's chain starts after entry {archived}"
    )
    return 0


def add_ops_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``db``, ``audit``, ``outbox`` and ``dead-letters``."""
    db = sub.add_parser("db", help="store migrations, backups, retention and sealing keys")
    dbs = db.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    up = dbs.add_parser("upgrade", help="apply every migration (alembic) to the configured store")
    up.add_argument("--config", help="TOML settings file")
    up.set_defaults(func=cmd_db_upgrade)
    bk = dbs.add_parser(
        "backup",
        help="copy the embedded SQLite store as of now, while gateways write to it; the copy "
        "is checked (integrity, audit chain) and kept only if sound",
    )
    bk.add_argument("dest", help="the backup file to write")
    bk.add_argument("--force", action="store_true", help="replace the file if it exists")
    bk.add_argument("--json", action="store_true", help="one JSON object")
    bk.add_argument("--config", help="TOML settings file")
    bk.set_defaults(func=cmd_db_backup)
    pg = dbs.add_parser(
        "purge",
        help="delete what [retention] no longer keeps: idempotency records, delivered outbox "
        "rows, closed cases (never pending rows or dead letters); the audit log records it",
    )
    pg.add_argument("--dry-run", action="store_true", help="count what would go; delete nothing")
    pg.add_argument("--json", action="store_true", help="one JSON object")
    pg.add_argument("--config", help="TOML settings file")
    pg.set_defaults(func=cmd_db_purge)
    from .cli_keys import add_key_commands  # it uses this module's store helpers

    add_key_commands(dbs)
    au = sub.add_parser("audit", help="the hash-chained audit log")
    aus = au.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    ver = aus.add_parser(
        "verify",
        help="walk the chain kept in the store (and with --archives, its archive files), "
        "checking it against its signed checkpoints; report the first broken link, a chain "
        "rewritten or cut short, or a checkpoint that does not hold (exit 1)",
    )
    ver.add_argument(
        "--archives",
        metavar="DIR",
        help="also check the archive files in DIR: each entry, each file following the one "
        "before it from the chain's start, the last reaching the store's chain, and each "
        "file's SHA-256 against the store's record",
    )
    ver.add_argument("--config", help="TOML settings file")
    ver.set_defaults(func=cmd_audit_verify)
    add_audit_signing_commands(aus, ver)
    ar = aus.add_parser(
        "archive",
        help="move entries older than a cut-off out of the store into gzip files of JSON lines "
        "in DIR (oldest first, each file checked before its entries are deleted); the chain "
        "stays verifiable with `audit verify --archives DIR`",
    )
    when = ar.add_mutually_exclusive_group()
    when.add_argument(
        "--before", help="archive entries made before this ISO 8601 date or time (UTC unless given)"
    )
    when.add_argument(
        "--days",
        type=float,
        help="archive entries made more than this many days ago (default: retention.audit_days)",
    )
    ar.add_argument(
        "--dir",
        help="the directory the archive files go to (default: retention.audit_archive_dir)",
    )
    ar.add_argument(
        "--per-file",
        type=int,
        help="entries per file, deleted from the store in one transaction (default: "
        "retention.audit_entries_per_file, 10000)",
    )
    ar.add_argument(
        "--dry-run", action="store_true", help="say which entries would move; move nothing"
    )
    ar.add_argument("--json", action="store_true", help="one JSON object")
    ar.add_argument("--config", help="TOML settings file")
    ar.set_defaults(func=cmd_audit_archive)
    ob = sub.add_parser("outbox", help="what waits for delivery, partner by partner")
    obs = ob.add_subparsers(dest="outbox_command", required=True, metavar="COMMAND")
    st = obs.add_parser(
        "status",
        help="pending rows per partner: due now, waiting (backoff or open circuit), held by a "
        "gateway, the next attempt, the oldest row's age, attempts and last error; then the "
        "gateway processes (their heartbeats: delivering, or serving only), and the settings "
        "replicas must share that they do not (audit.hash_algorithm, store.keys, mappings, "
        "partners, retention)",
    )
    st.add_argument("--json", action="store_true", help="one JSON array, a partner per object")
    st.add_argument("--config", help="TOML settings file")
    st.set_defaults(func=cmd_outbox_status)
    gw = sub.add_parser(
        "gateways",
        help="the gateway processes serving from the store and whether they run alike",
        description="The gateway processes serving from the store (their heartbeats, written "
        "every 5 s; live: seen in the last 15 s), delivering or serving only, with the "
        "settings replicas must share as each runs them (audit.hash_algorithm, store.keys, "
        "mappings, partners, retention) and the partners whose inboxes it knows. Exit status 0 while every live gateway runs them alike, 1 while one "
        "does not, 2 if the store cannot be read: a rollout can check it before it moves on.",
    )
    gw.add_argument("--all", action="store_true", help="also gateways not seen lately")
    gw.add_argument(
        "--json",
        action="store_true",
        help="one JSON object: gateways (each with its settings and the partners whose "
        "inboxes it knows) and settings_differ (the names of the settings the live gateways "
        "do not all share)",
    )
    gw.add_argument("--config", help="TOML settings file")
    gw.set_defaults(func=cmd_gateways)
    dl = sub.add_parser("dead-letters", help="list, show and replay dead letters")
    dls = dl.add_subparsers(dest="dl_command", required=True, metavar="COMMAND")
    ls = dls.add_parser("list", help="dead letters, oldest first")
    ls.add_argument("--limit", type=int, default=100)
    ls.add_argument("--json", action="store_true")
    show = dls.add_parser("show", help="one dead letter")
    show.add_argument("id", type=int)
    rp = dls.add_parser("replay", help="put dead letters back into the outbox")
    rp.add_argument("ids", type=int, nargs="*")
    rp.add_argument("--all", action="store_true", help="replay every dead letter")
    for p in (ls, show, rp):
        p.add_argument("--config", help="TOML settings file")
        p.set_defaults(func=cmd_dead_letters)
