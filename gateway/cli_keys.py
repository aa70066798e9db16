"""``tongban db keys new|wrap|unwrap|status`` and ``tongban db reencrypt``: the keys that seal
personal data in the store, kept in the clear or wrapped by a key in a hardware security module,
and moving stored values to the active key (docs/security.md#personal-data-at-rest).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError
from tqdm import tqdm

from .cli_ops import read_store, writing_store
from .cli_serve import read_settings
from .errors import GatewayError
from .store.rekey import (
    SEALED_COLUMNS,
    Progress,
    ReencryptIntent,
    reencrypt_progress,
    sealed_counts,
)
from .store.sealing import ALGORITHMS, Keyring, KeyringError, generate_key, write_keyring
from .timestamps import utc_text

__all__ = ["add_key_commands"]


def _keys_path(args: argparse.Namespace) -> Path | None:
    """``--file``, or ``store.keys_file`` of ``--config`` (None, said, if neither)."""
    if args.file:
        return Path(args.file)
    settings = read_settings(args.config)
    if settings is None:
        return None
    if settings.store.keys_file is None:
        print("error: give --file, or set store.keys_file", file=sys.stderr)
    return settings.store.keys_file


def cmd_keys_new(args: argparse.Namespace) -> int:
    """Add a new random key to a keys file (made if missing) and make it the active one."""
    path = _keys_path(args)
    if path is None:
        return 2
    keys: dict[str, tuple[str, str]] = {}
    wrapping = args.wrap_with
    try:
        if path.exists():
            ring = Keyring.load(path)
            keys, wrapping = ring.entries(), wrapping or ring.wrapping
        kid = args.id or datetime.now(UTC).strftime("k%Y%m%d%H%M%S")
        if kid in keys:
            print(f"error: {path} already has a key {kid!r}", file=sys.stderr)
            return 2
        keys[kid] = (args.algorithm, generate_key(args.algorithm))
        written = write_keyring(path, kid, keys, wrapping)
    except KeyringError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    older = (
        f"; it still opens what {', '.join(k for k in keys if k != kid)} sealed"
        if len(keys) > 1
        else ""
    )
    described = written.wrapping_described()
    wrapped = f", wrapped by {described}" if described else ""
    print(
        f"key {kid} ({args.algorithm}) added to {path}{wrapped} and made active{older}. "
        "Gateways using this file seal with it from now on (a serving one reads the file again "
        "within a second), and serving gateways move the stored values to it in the background "
        "(store.reencrypt_in_background; `tongban db reencrypt` does it at once)"
    )
    return 0


def _count(ring: Keyring) -> str:
    n = len(ring.keys)
    return f"the {n} keys" if n > 1 else "the key"


def cmd_keys_wrap(args: argparse.Namespace) -> int:
    """Write the keys file again with every key wrapped by a key in a PKCS#11 token (made
    there first with ``--generate``), or, with ``args.unwrap``, in the clear."""
    from .store.key_wrapping import WrappingError, generate_wrapping_key, wrapping_uri

    path = _keys_path(args)
    if path is None:
        return 2
    uri = None if args.unwrap else args.uri
    try:
        ring = Keyring.load(path)
        if uri is not None and args.generate:
            generate_wrapping_key(wrapping_uri(uri))
        described = write_keyring(path, ring.active, ring.entries(), uri).wrapping_described()
    except (KeyringError, WrappingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    made = (
        f"generated an AES-256 key {described} (sensitive, not extractable); "
        if (uri and args.generate)
        else ""
    )
    if uri is None:
        print(
            f"wrote {_count(ring)} of {path} in the clear (mode 600): the file alone "
            "now opens the store's sealed values"
        )
    else:
        print(
            f"{made}wrote {_count(ring)} of {path} wrapped by {described}: the "
            "file holds no secret; gateways unwrap the keys in the token when they read it "
            "(a serving one within a second). Copies of the file as it was before (backups) "
            "still hold the keys in the clear: rotate (db keys new) if that matters"
        )
    return 0


def cmd_keys_status(args: argparse.Namespace) -> int:
    """How many stored values each key seals; exit 1 if some are sealed with a key the keys
    file lacks (they cannot be read)."""
    settings = read_settings(args.config)
    if settings is None:
        return 2
    read = read_store(
        settings,
        "store",
        lambda reader: (sealed_counts(reader.engine), reencrypt_progress(reader.engine)),
    )
    if read is None:
        return 1
    counts, walks = read
    ring = settings.store.keyring
    known = set(ring.keys) if ring else set()
    used = {kid for per in counts.values() for kid in per if kid}
    # The active key seals what comes next: never one to drop, whatever it seals now.
    active = {ring.active} if ring else set()
    missing, unused = sorted(used - known), sorted(known - used - active)
    if args.json:
        print(
            json.dumps(
                {
                    "active": ring.active if ring else None,
                    "wrapping_key": ring.wrapping_described() if ring else None,
                    "values": counts,
                    "missing_keys": missing,
                    "unused_keys": unused,
                    "background_walk": {
                        p.column: {
                            "key": p.key_id,
                            "last_row": p.last_seq,
                            "sealed": p.sealed,
                            "started_at": p.started_at,
                            "done_at": p.done_at,
                            "problem": p.problem or None,
                        }
                        for p in walks
                    },
                }
            )
        )
        return 1 if missing else 0
    print(f"active key: {ring.active}" if ring else "no keys (store.keys_file unset)")
    if ring is not None:
        wrapping = ring.wrapping_described()
        where = f"wrapped by {wrapping}" if wrapping else "in the clear"
        print(f"keys in {settings.store.keys_file}: {where}")
    for column, per in counts.items():
        parts = [
            f"{n} in the clear" if not kid else f"{n} sealed with {kid}" for kid, n in per.items()
        ]
        print(f"{column}: {', '.join(parts) or 'no values'}")
    for p in walks:
        print(f"{p.column}: background re-encryption {_walk_state(p, ring)}")
    if unused:
        print(
            f"older keys sealing no stored value: {', '.join(unused)} (drop one only once no "
            "backup needs it)"
        )
    if missing:
        print(
            f"error: values are sealed with keys the keys file lacks: {', '.join(missing)}",
            file=sys.stderr,
        )
        return 1
    return 0


def _walk_state(p: Progress, ring: Keyring | None) -> str:
    """Where the serving gateways' walk over one column is, in words."""
    began = utc_text(p.started_at)
    if p.problem:
        return f"to key {p.key_id} stopped at {p.problem} (begun {began})"
    if p.done_at is not None:
        behind = "" if ring is None or ring.active == p.key_id else f", not yet to {ring.active}"
        return f"to key {p.key_id} done {utc_text(p.done_at)} ({p.sealed} sealed{behind})"
    return f"to key {p.key_id} at row {p.last_seq} ({p.sealed} sealed since {began})"


async def _reencrypt(args: argparse.Namespace) -> int:
    settings = read_settings(args.config)
    if settings is None:
        return 2
    if settings.store.keyring is None:
        print("error: no keys to seal with: set store.keys_file", file=sys.stderr)
        return 2
    totals = {c: {"read": 0, "sealed": 0, "changed": 0} for c in SEALED_COLUMNS}
    problem = ""
    quiet = args.json or args.no_progress or not sys.stderr.isatty()
    async with writing_store(settings) as store:
        try:
            for column, total in totals.items():
                after = 0
                with tqdm(desc=f"  {column}", unit=" values", disable=quiet, leave=False) as bar:
                    while not problem:
                        step = await store.write(ReencryptIntent("cli", column, after, args.batch))
                        total["read"] += step.read
                        total["sealed"] += step.sealed
                        total["changed"] += step.changed
                        problem, after = step.problem, step.last
                        bar.update(step.read)
                        if step.read < args.batch:
                            break
        except (SQLAlchemyError, GatewayError) as exc:
            print(f"error: cannot re-encrypt: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
    active = settings.store.keyring.active
    if args.json:
        print(json.dumps({"active": active, "columns": totals, "problem": problem or None}))
    else:
        for column, total in totals.items():
            again = (
                f"; {total['changed']} changed meanwhile (run again)" if total["changed"] else ""
            )
            print(
                f"{column}: sealed {total['sealed']} of {total['read']} values with key {active}{again}"
            )
    if problem:
        print(f"error: stopped at {problem}", file=sys.stderr)
        return 1
    return 0


def cmd_reencrypt(args: argparse.Namespace) -> int:
    """Seal with the active key every stored value that is in the clear or under another key."""
    return asyncio.run(_reencrypt(args))


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


def add_key_commands(dbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``db keys new|wrap|unwrap|status`` and ``db reencrypt`` under ``tongban db``."""
    keys = dbs.add_parser(
        "keys", help="the keys that seal personal data in the store (store.keys_file)"
    )
    ks = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    new = ks.add_parser(
        "new",
        help="add a new random key to the keys file (made, mode 600, if missing) and make it "
        "the one new values are sealed with; older keys stay to open what they sealed",
    )
    new.add_argument("--file", help="the keys file (default: store.keys_file of --config)")
    new.add_argument(
        "--algorithm",
        choices=sorted(ALGORITHMS),
        default="aes-256-gcm",
        help="the cipher (default aes-256-gcm; sm4-gcm is GB/T 32907's SM4)",
    )
    new.add_argument("--id", help="the key's id (default: k and the UTC time, kYYYYMMDDHHMMSS)")
    new.add_argument(
        "--wrap-with",
        metavar="URI",
        help="write the file's keys wrapped by this AES key in a PKCS#11 token (RFC 7512 URI) "
        "instead of in the clear (default: as the file is)",
    )
    new.add_argument("--config", help="TOML settings file")
    new.set_defaults(func=cmd_keys_new)
    wrap = ks.add_parser(
        "wrap",
        help="write the keys file again with every key wrapped by an AES key in a hardware "
        "security module (PKCS#11), so that the file holds no secret",
    )
    wrap.add_argument(
        "uri",
        metavar="URI",
        help="the wrapping key: pkcs11:token=LABEL;object=LABEL?module-path=LIB&pin-source=FILE",
    )
    wrap.add_argument(
        "--generate",
        action="store_true",
        help="first generate that key in the token (AES-256, sensitive, not extractable, "
        "encrypt and decrypt only); refused if its label is taken",
    )
    wrap.add_argument("--file", help="the keys file (default: store.keys_file of --config)")
    wrap.add_argument("--config", help="TOML settings file")
    wrap.set_defaults(func=cmd_keys_wrap, unwrap=False)
    unwrap = ks.add_parser(
        "unwrap",
        help="write the keys file again with its keys in the clear (leaving the hardware "
        "security module: the file alone then opens the store)",
    )
    unwrap.add_argument("--file", help="the keys file (default: store.keys_file of --config)")
    unwrap.add_argument("--config", help="TOML settings file")
    unwrap.set_defaults(func=cmd_keys_wrap, unwrap=True, uri=None, generate=False)
    st = ks.add_parser(
        "status",
        help="how many stored values each key seals, how many are in the clear, and where "
        "the serving gateways' background re-encryption is; exit 1 if some are sealed with a "
        "key the keys file lacks",
    )
    st.add_argument("--json", action="store_true", help="one JSON object")
    st.add_argument("--config", help="TOML settings file")
    st.set_defaults(func=cmd_keys_status)
    re = dbs.add_parser(
        "reencrypt",
        help="seal with the active key every stored value in the clear or under an older key, "
        "a transaction per batch, each recorded in the audit log (safe while gateways run); "
        "serving gateways do the same by themselves, paced (store.reencrypt_in_background)",
    )
    re.add_argument(
        "--batch", type=_positive, default=500, help="rows per transaction (default 500)"
    )
    re.add_argument("--json", action="store_true", help="one JSON object")
    re.add_argument("--no-progress", action="store_true", help="no progress bar (on a terminal)")
    re.add_argument("--config", help="TOML settings file")
    re.set_defaults(func=cmd_reencrypt)
