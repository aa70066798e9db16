"""``tongban audit keys new`` and ``public``, ``tongban audit checkpoints`` and ``tongban audit
witnessed``, and what ``tongban audit verify`` says of the signed checkpoints
(gateway.audit_signing)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import serialization

from .audit import ChainReport, SignedCheckpoints
from .audit_signing import (
    ALGORITHMS,
    Checkpoint,
    CheckpointError,
    PublicKey,
    SigningKeyError,
    generate_signing_key,
    key_id,
    load_public_keys,
    public_spki,
    read_checkpoints,
)
from .cli_serve import read_settings
from .timestamps import utc_text

if TYPE_CHECKING:
    from .settings import Settings

__all__ = [
    "add_audit_signing_commands",
    "external_checkpoints",
    "report_checkpoints",
    "trusted_public_keys",
]


def trusted_public_keys(given: list[str] | None, settings: Settings) -> dict[str, PublicKey] | None:
    """The keys whose checkpoints are trusted: those given with ``--public-key``, else
    ``audit.trusted_keys`` and the public half of ``audit.signing_key``; None (said why) if a
    file given is not a key."""
    if not given:
        return settings.audit.trusted_public_keys
    try:
        return load_public_keys(Path(p) for p in given)
    except SigningKeyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def external_checkpoints(path: str | None) -> list[Checkpoint] | None:
    """The checkpoints of ``--checkpoints FILE``: JSON lines of ``audit checkpoints --json``, or
    OperationsService.ListAuditCheckpoints responses as JSON ([] without it; None, said why,
    if unreadable)."""
    from .rpc.operations import checkpoints_from_response_json

    if path is None:
        return []
    try:
        return read_checkpoints(Path(path), checkpoints_from_response_json)
    except CheckpointError as exc:
        print(f"error: --checkpoints {exc}", file=sys.stderr)
        return None


def report_checkpoints(
    found: SignedCheckpoints,
    counts: tuple[int, int],
    chain: ChainReport,
    archives_checked: bool,
    settings: Settings,
    unsigned: tuple[int, float] | None = None,
) -> bool:
    """Print what the checkpoints (``counts``: in the store, from ``--checkpoints``) showed;
    False if one does not hold. A chain found rewritten or cut by them is reported as broken
    by the chain's own lines. ``unsigned``: the first entry no checkpoint covers, and when it
    was made, given with ``audit.signing_key`` set: one older than two intervals is warned of."""
    stored, given = counts
    total = stored + given
    source = f"{stored} in the store" + (f", {given} from --checkpoints" if given else "")
    _warn_unsigned(chain, settings, unsigned)
    if total == 0:
        return True
    if found.unchecked:
        print(
            f"checkpoints NOT CHECKED ({source}): no trusted public key; give --public-key "
            "FILE, or set audit.signing_key or audit.trusted_keys"
        )
        return True
    for problem in found.problems:
        print(f"checkpoint BROKEN: {problem}")
    if found.trusted:
        last = found.trusted[max(found.trusted)]
        keys = sorted({cp.key_id for cp in found.trusted.values()})
        archived = [n for n in found.trusted if n <= chain.after]
        head = chain.after + chain.checked
        print(
            f"signed checkpoints: {total - len(found.problems)} of {total} verify ({source}; "
            f"key{'s' * (len(keys) > 1)} {', '.join(keys)}); the last covers entries "
            f"1-{last.length}, signed at "
            f"{utc_text(last.ts)}"
            + (
                f"; entries {last.length + 1}-{head} are not signed yet"
                if chain.ok and head > last.length
                else ""
            )
        )
        if archived and not archives_checked and chain.ok:
            print(
                f"  {len(archived)} of them cover archived entries only: check those with "
                "--archives DIR"
            )
    return not found.problems


def _warn_unsigned(
    chain: ChainReport, settings: Settings, unsigned: tuple[int, float] | None
) -> None:
    """Say so when, with ``audit.signing_key`` set, entries older than two checkpoint
    intervals are covered by no checkpoint: a gateway with the key signs them within one, so
    either none ran since, or checkpoints were deleted (with a rewrite, say)."""
    every = settings.audit.checkpoint_seconds
    if unsigned is None or not chain.ok:
        return
    first, made = unsigned
    head = chain.after + chain.checked
    if first > head or time.time() - made <= 2 * every:
        return
    print(
        f"WARNING: entries {first}-{head} (the first made at {utc_text(made)}) are covered by no "
        f"signed checkpoint, though audit.signing_key is set and a serving gateway signs within "
        f"{every:g}s: unless no gateway with the key ran since, checkpoints were deleted. Check "
        "the chain against copies kept elsewhere (--checkpoints FILE)"
    )


def cmd_audit_keys_new(args: argparse.Namespace) -> int:
    """Write a new key (Ed25519 or SM2) for signing the audit chain's checkpoints, to a file, or
    an Ed25519 one into a PKCS#11 token."""
    if args.pkcs11 is not None:
        if args.algorithm != "ed25519":
            print(
                "error: --pkcs11 generates Ed25519 keys only (PKCS#11 3.0 defines no SM2 "
                "mechanism); write an SM2 key to a --file",
                file=sys.stderr,
            )
            return 2
        if not args.public_file:
            print("error: --pkcs11 needs --public-file FILE for the public key", file=sys.stderr)
            return 2
        return _new_pkcs11_key(args.pkcs11, Path(args.public_file))
    path = Path(args.file)
    try:
        signer, public = generate_signing_key(path, args.algorithm)
    except (SigningKeyError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    name = _ALGORITHM_NAMES[signer.algorithm]
    print(f"wrote a new {name} audit signing key to {path} (mode 600), key id {signer.key_id}")
    print(f"wrote its public key to {public}: give it to whoever verifies the audit chain")
    print(
        f'set audit.signing_key = "{path}"; serving gateways read a changed file before their '
        "next checkpoint. After a rotation, list the old public key in audit.trusted_keys"
    )
    return 0


_ALGORITHM_NAMES = {"ed25519": "Ed25519", "sm2": "SM2 (with SM3)"}


def _new_pkcs11_key(uri: str, public: Path) -> int:
    from .audit_pkcs11 import generate_pkcs11_key, signing_uri

    if public.exists():
        print(f"error: {public}: already exists; choose another file", file=sys.stderr)
        return 2
    try:
        signer = generate_pkcs11_key(signing_uri(uri))
        public.write_bytes(signer.public_pem())
    except (SigningKeyError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"generated a new Ed25519 audit signing key in {signer.describe()} (sensitive, not "
        f"extractable), key id {signer.key_id}"
    )
    print(f"wrote its public key to {public}: give it to whoever verifies the audit chain")
    print(
        "set audit.signing_key to that URI; a gateway reads the key when it starts. After a "
        "rotation, list the old public key in audit.trusted_keys"
    )
    return 0


def cmd_audit_keys_rotate(args: argparse.Namespace) -> int:
    """Give a PKCS#11 token's signing key label to a new key pair, keeping the old one."""
    from .audit_pkcs11 import retired_label, rotate_pkcs11_key, signing_uri

    new_pem, old_pem = Path(args.public_file), Path(args.retired_public_file)
    for path in (new_pem, old_pem):
        if path.exists():
            print(f"error: {path}: already exists; choose another file", file=sys.stderr)
            return 2
    try:
        uri = signing_uri(args.pkcs11)
        old, signer = rotate_pkcs11_key(uri)
    except SigningKeyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    old_id = key_id(old)
    try:
        new_pem.write_bytes(signer.public_pem())
        old_pem.write_bytes(public_spki(old, serialization.Encoding.PEM))
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    label = uri.label or ""
    print(
        f"generated a new Ed25519 audit signing key in {signer.describe()} (sensitive, not "
        f"extractable), key id {signer.key_id}; the old key {old_id} is kept in the token as "
        f"{retired_label(label, old_id)!r}"
    )
    print(f"wrote the new public key to {new_pem} and the old one to {old_pem}")
    print(
        "serving gateways with this URI sign with the new key from their next checkpoint, and "
        f"go on trusting the old one; list {old_pem} in audit.trusted_keys (and give {new_pem} "
        "to the peers and auditors) so that restarted gateways and tongban audit verify "
        "trust both"
    )
    return 0


def cmd_audit_keys_public(args: argparse.Namespace) -> int:
    """Print the public half of audit.signing_key (PEM) and its key id."""
    settings = read_settings(args.config)
    if settings is None:
        return 2
    signer = settings.audit.signer
    if signer is None:
        print("error: audit.signing_key is not set", file=sys.stderr)
        return 2
    print(f"key id {signer.key_id}: {signer.describe()}", file=sys.stderr)
    sys.stdout.write(signer.public_pem().decode("ascii"))
    return 0


def cmd_audit_checkpoints(args: argparse.Namespace) -> int:
    """List the store's signed checkpoints (as JSON lines with --json: evidence to keep)."""
    from .cli_ops import read_store
    from .store.checkpoints import stored_checkpoints

    settings = read_settings(args.config)
    if settings is None:
        return 2
    found = read_store(
        settings, "audit checkpoints", lambda r: stored_checkpoints(r.engine, args.after)
    )
    if found is None:
        return 2
    if args.json:
        for cp in found:
            print(json.dumps(cp.to_json(), separators=(",", ":")))
        return 0
    for cp in found:
        print(f"entries 1-{cp.length:<10} signed {utc_text(cp.ts)}  key {cp.key_id}")
    print(f"{len(found)} signed checkpoint(s)")
    return 0


def cmd_audit_witnessed(args: argparse.Namespace) -> int:
    """List the peer gateways' checkpoints this gateway witnessed (with --peer P --json: the
    file `tongban audit verify --checkpoints FILE` reads at P)."""
    from .cli_ops import read_store
    from .store.witness import witnessed_checkpoints

    settings = read_settings(args.config)
    if settings is None:
        return 2
    found = read_store(
        settings,
        "audit witnessed",
        lambda r: witnessed_checkpoints(r.engine, args.peer, args.after),
    )
    if found is None:
        return 2
    if args.json:
        for w in found:
            print(json.dumps(w.checkpoint.to_json(), separators=(",", ":")))
        return 0
    # A length held with two hashes or more: the peer signed two chains.
    hashes = Counter((w.peer, w.checkpoint.length) for w in found)
    conflicts = 0
    for w in found:
        cp = w.checkpoint
        twin = hashes[w.peer, cp.length] > 1
        conflicts += twin
        print(
            f"{w.peer:<16} entries 1-{cp.length:<10} signed {utc_text(cp.ts)}  key {cp.key_id}  "
            f"received {utc_text(w.received_at)}" + ("  CONFLICT: another hash" if twin else "")
        )
    peers = len({w.peer for w in found})
    print(f"{len(found)} witnessed checkpoint(s) of {peers} peer gateway(s)")
    if conflicts:
        print(
            f"{conflicts} checkpoint(s) share a length with another hash: that peer signed two "
            "different chains (both kept as evidence)"
        )
        return 1
    return 0


def add_audit_signing_commands(
    aus: argparse._SubParsersAction,  # type: ignore[type-arg]
    verify: argparse.ArgumentParser,
) -> None:
    """Register ``audit keys new``/``public``, ``audit checkpoints`` and ``audit witnessed``;
    add ``verify``'s options."""
    verify.add_argument(
        "--public-key",
        action="append",
        metavar="FILE",
        help="trust checkpoints signed by this public key (Ed25519 or SM2, PEM; repeat for "
        "several); "
        "default: the public half of audit.signing_key and audit.trusted_keys",
    )
    verify.add_argument(
        "--checkpoints",
        metavar="FILE",
        help="also check the chain against the checkpoints in FILE (JSON lines from `audit "
        "checkpoints --json`, or OperationsService.ListAuditCheckpoints responses as JSON): "
        "copies kept away from the store still hold once its own rows are deleted",
    )
    keys = aus.add_parser("keys", help="the key that signs the audit chain's checkpoints")
    ks = keys.add_subparsers(dest="audit_keys_command", required=True, metavar="COMMAND")
    new = ks.add_parser(
        "new",
        help="write a new signing key (Ed25519, or SM2 with --algorithm sm2; PEM, mode 600) "
        "and its public key (FILE.pub), or generate an Ed25519 one in a PKCS#11 token",
    )
    new.add_argument(
        "--algorithm",
        choices=ALGORITHMS,
        default="ed25519",
        help="ed25519 (default), or sm2: SM2 with SM3 (GB/T 32918.2), for deployments held to "
        "China's commercial cryptography rules; a file key only",
    )
    where = new.add_mutually_exclusive_group(required=True)
    where.add_argument("--file", help="where to write the private key")
    where.add_argument(
        "--pkcs11",
        metavar="URI",
        help="generate the key pair in a PKCS#11 token instead (a hardware security module; "
        "RFC 7512 URI: pkcs11:token=LABEL;object=LABEL?module-path=LIB&pin-source=FILE): the "
        "private key never leaves it",
    )
    new.add_argument(
        "--public-file",
        metavar="FILE",
        help="with --pkcs11: where to write the public key (PEM)",
    )
    new.set_defaults(func=cmd_audit_keys_new)
    rot = ks.add_parser(
        "rotate",
        help="in a PKCS#11 token: generate a new signing key pair under the URI's label and "
        "keep the old one as LABEL.retired-KEYID; serving gateways sign with the new one from "
        "their next checkpoint (no restart)",
    )
    rot.add_argument("--pkcs11", metavar="URI", required=True, help="the key's PKCS#11 URI")
    rot.add_argument(
        "--public-file", metavar="FILE", required=True, help="where to write the new public key"
    )
    rot.add_argument(
        "--retired-public-file",
        metavar="FILE",
        required=True,
        help="where to write the old public key (for audit.trusted_keys)",
    )
    rot.set_defaults(func=cmd_audit_keys_rotate)
    pub = ks.add_parser(
        "public",
        help="print the public key (PEM) of audit.signing_key, a file or a PKCS#11 token's",
    )
    pub.add_argument("--config", help="TOML settings file")
    pub.set_defaults(func=cmd_audit_keys_public)
    cps = aus.add_parser(
        "checkpoints",
        help="list the signed checkpoints of the audit chain held in the store",
    )
    cps.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per line, as `audit verify --checkpoints FILE` reads them",
    )
    cps.add_argument(
        "--after", type=int, default=0, metavar="N", help="only checkpoints of more than N entries"
    )
    cps.add_argument("--config", help="TOML settings file")
    cps.set_defaults(func=cmd_audit_checkpoints)
    wit = aus.add_parser(
        "witnessed",
        help="list the peer gateways' signed checkpoints this gateway keeps as their witness",
    )
    wit.add_argument("--peer", metavar="ID", help="only this peer gateway's (a partner id)")
    wit.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per line (with --peer: the file `audit verify --checkpoints FILE` "
        "reads at that peer)",
    )
    wit.add_argument(
        "--after", type=int, default=0, metavar="N", help="only checkpoints of more than N entries"
    )
    wit.add_argument("--config", help="TOML settings file")
    wit.set_defaults(func=cmd_audit_witnessed)
