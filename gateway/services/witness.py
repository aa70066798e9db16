"""Witnessing: peer gateways keep copies of each other's signed audit checkpoints.

A gateway's checkpoints (gateway.audit_signing) live in its own store. Whoever can write to
that store can rewrite the chain, compute every hash again and delete the checkpoints with it;
the gateways then sign the rewritten chain as found, and only a copy of an old checkpoint kept
elsewhere shows the rewrite. Peer gateways keep those copies for each other, the way
transparency logs' witnesses keep signed tree heads:

* **the witness** (:class:`AuditWitness`, served as ``AuditWitnessService`` to peers only)
  checks a checkpoint's signature with the peer's keys (``partners.<id>.audit_public_keys``),
  keeps it, and answers with the longest checkpoint of that peer it held below it. One of the
  same length with another hash is kept too, as evidence, and answered ALREADY_EXISTS: the
  peer signed two chains.
* **the gateway whose chain it is** (:class:`WitnessClient`, run by gateway.app with each
  checkpoint) hands each peer its store's last checkpoint, and checks that its chain still
  has the witness's ``previous`` one. If not, its chain was rewritten or cut short below what
  a peer witnessed, and it signs nothing more (``broken``). It does this before signing each
  new checkpoint, and again after: a rewrite is found at the next checkpoint, whichever
  gateway of the store signs it, and after every restart.

A hash chain has no proofs of consistency between two lengths (a Merkle tree would), so the
witness cannot tell by itself whether a longer checkpoint extends a shorter one; the check is
the signing gateway's, against its own entries. What a witness can tell alone is a second hash
for one length.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import string
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from adapters.transports import TransportError
from tongban.v1 import operations_pb2 as ops
from tongban.v1 import witness_pb2

from ..audit_signing import MAX_SIGNATURE_BYTES, Checkpoint, PublicKey, signature_problem
from ..auth import Caller
from ..errors import AuditKeyUnknown, CheckpointConflict, InvalidRequest
from ..store.checkpoints import held_problem, last_checkpoint
from ..store.store import Store
from ..store.witness import WitnessIntent
from ..timestamps import utc_text

__all__ = ["AuditWitness", "WitnessClient", "checkpoint_from_proto", "checkpoint_to_proto"]

#: A call to a peer's AuditWitnessService: (request, timeout in seconds) -> its answer.
WitnessCall = Callable[
    [witness_pb2.WitnessCheckpointRequest, float], Awaitable[witness_pb2.WitnessCheckpointResponse]
]

log = logging.getLogger("tongban.witness")


def checkpoint_to_proto(cp: Checkpoint) -> ops.AuditCheckpoint:
    """A checkpoint as the RPCs carry it (its time to the millisecond, as signed: not
    :func:`gateway.timestamps.timestamp`, whose nanoseconds are truncated from the float and may
    fall a millisecond short)."""
    ms = round(cp.ts * 1000)
    out = ops.AuditCheckpoint(
        length=cp.length, hash=cp.hash, key_id=cp.key_id, signature=base64.b64decode(cp.signature)
    )
    out.signed_at.seconds, out.signed_at.nanos = ms // 1000, (ms % 1000) * 1_000_000
    return out


def checkpoint_from_proto(m: ops.AuditCheckpoint) -> Checkpoint:
    """The checkpoint an RPC carried (not checked: see :func:`checked_checkpoint`)."""
    ms = m.signed_at.seconds * 1000 + m.signed_at.nanos // 1_000_000
    return Checkpoint(
        m.length, m.hash, ms / 1000, m.key_id, base64.b64encode(m.signature).decode("ascii")
    )


def checked_checkpoint(request: witness_pb2.WitnessCheckpointRequest) -> Checkpoint:
    """The request's checkpoint, its fields checked (InvalidRequest naming the one at fault)."""
    if not request.HasField("checkpoint"):
        raise InvalidRequest("checkpoint is required", "checkpoint")
    m = request.checkpoint
    if m.length < 1 or m.length >= 2**63:
        raise InvalidRequest(
            "checkpoint.length must be a positive entry count", "checkpoint.length"
        )
    if len(m.hash) != 64 or m.hash.strip(string.hexdigits):
        raise InvalidRequest("checkpoint.hash must be 64 hex digits", "checkpoint.hash")
    if len(m.key_id) != 16 or m.key_id.strip(string.hexdigits):
        raise InvalidRequest("checkpoint.key_id must be 16 hex digits", "checkpoint.key_id")
    if not 0 < len(m.signature) <= MAX_SIGNATURE_BYTES:
        raise InvalidRequest(
            f"checkpoint.signature must be 1-{MAX_SIGNATURE_BYTES} bytes (Ed25519: 64; SM2: DER, "
            "at most 72)",
            "checkpoint.signature",
        )
    if not m.HasField("signed_at") or m.signed_at.seconds < 0 or not 0 <= m.signed_at.nanos < 10**9:
        raise InvalidRequest(
            "checkpoint.signed_at must be a time from 1970", "checkpoint.signed_at"
        )
    return checkpoint_from_proto(m)


@dataclass
class AuditWitness:
    """Keeps peer gateways' checkpoints (``keys``: each peer's audit public keys by id)."""

    store: Store
    keys: Mapping[str, Mapping[str, PublicKey]]
    clock: Callable[[], float] = time.time
    on_witnessed: Callable[[str, str], None] | None = None  # (peer, outcome)

    async def witness(
        self, caller: Caller, request: witness_pb2.WitnessCheckpointRequest
    ) -> witness_pb2.WitnessCheckpointResponse:
        """Check the peer's checkpoint and keep it; answer with the one before it."""
        peer = caller.partner
        cp = checked_checkpoint(request)
        keys = self.keys.get(peer) or {}
        if cp.key_id not in keys:
            self._count(peer, "refused")
            held = ", ".join(sorted(keys)) or "none"
            raise AuditKeyUnknown(
                f"checkpoint.key_id {cp.key_id} is not one of this peer's audit keys here "
                f"({held}): partners.{peer}.audit_public_keys names them",
                "checkpoint.key_id",
            )
        bad = signature_problem(cp, keys)
        if bad:
            self._count(peer, "refused")
            raise InvalidRequest(f"checkpoint.signature: {bad}", "checkpoint.signature")
        outcome, previous = await self.store.write(
            WitnessIntent(peer, cp.length, cp.hash, cp.ts, cp.key_id, cp.signature, self.clock())
        )
        self._count(peer, outcome)
        if outcome == "conflict":
            log.error(
                "a peer gateway signed two audit chains: both checkpoints kept",
                extra={"peer": peer, "length": cp.length, "key_id": cp.key_id},
            )
            raise CheckpointConflict(
                f"a checkpoint of {cp.length} entries with another hash was witnessed here "
                "before; both are kept",
                "checkpoint.hash",
            )
        out = witness_pb2.WitnessCheckpointResponse(already_witnessed=outcome == "known")
        if previous is not None:
            out.previous.CopyFrom(checkpoint_to_proto(Checkpoint(*previous)))
        return out

    def _count(self, peer: str, outcome: str) -> None:
        if self.on_witnessed is not None:
            self.on_witnessed(peer, outcome)


@dataclass
class WitnessClient:
    """Hands this gateway's checkpoints to its peer gateways (``peers``: a call to each one's
    AuditWitnessService) and checks the chain against what they witnessed before."""

    store: Store
    peers: Mapping[str, WitnessCall]
    timeout: float = 10.0
    on_outcome: Callable[[str, str], None] | None = None  # (peer, outcome)
    on_length: Callable[[str, int], None] | None = None  # (peer, length acknowledged)
    # The last outcome of each peer: a peer refusing or unreachable is logged when that starts.
    _last: dict[str, str] = field(default_factory=dict)
    # The last checkpoint (length, hash) each peer answered for, the answer checking out.
    _answered: dict[str, tuple[int, str]] = field(default_factory=dict)

    async def hand_over(
        self, keys: Mapping[str, PublicKey], timeout: float | None = None, *, again: bool = True
    ) -> str:
        """Hand the store's last checkpoint to every peer at once; what the chain no longer
        has of what they witnessed ("" when nothing: every peer's answer checked, or none
        answered). ``keys``: this chain's signing keys, which the peers' answers must hold.
        ``again=False`` skips the peers that already answered for that very checkpoint (a
        stopping gateway with nothing new to sign: its peers may be stopping too)."""
        store = self.store
        last = await store.read(last_checkpoint, store.reader.engine)
        if last is None or not self.peers:
            return ""
        peers = {
            peer: call
            for peer, call in self.peers.items()
            if again or self._answered.get(peer) != (last.length, last.hash)
        }
        if not peers:
            return ""
        length, head = await store.read(store.reader.audit_head)
        found = await asyncio.gather(
            *(
                self._hand_one(peer, call, last, length, head, keys, timeout or self.timeout)
                for peer, call in peers.items()
            )
        )
        return "; ".join(problem for problem in found if problem)

    async def _hand_one(
        self,
        peer: str,
        call: WitnessCall,
        last: Checkpoint,
        length: int,
        head: str,
        keys: Mapping[str, PublicKey],
        timeout: float,
    ) -> str:
        request = witness_pb2.WitnessCheckpointRequest(checkpoint=checkpoint_to_proto(last))
        try:
            answer = await call(request, timeout)
        except TransportError as err:
            if err.code == "ALREADY_EXISTS":
                self._count(peer, "contradicted", "")
                return (
                    f"peer {peer} witnessed another hash for entries 1-{last.length} than the "
                    "store's checkpoint has"
                )
            outcome = "failed" if err.retryable else "refused"
            self._count(peer, outcome, f"{err.code}: {err}")
            return ""
        if self.on_length is not None:
            self.on_length(peer, last.length)
        if answer.HasField("previous"):
            previous = checkpoint_from_proto(answer.previous)
            bad = signature_problem(previous, keys)
            if bad:  # not this chain's checkpoint: the witness's answer is not believed
                self._count(peer, "refused", f"its answer's checkpoint: {bad}")
                return ""
            where = (
                f"the checkpoint peer {peer} witnessed (entries 1-{previous.length}, signed at "
                f"{utc_text(previous.ts)})"
            )
            problem = await self.store.read(
                held_problem, self.store.reader, length, head, previous, where
            )
            if problem:
                self._count(peer, "contradicted", "")
                return problem
        self._count(peer, "known" if answer.already_witnessed else "witnessed", "")
        self._answered[peer] = (last.length, last.hash)  # its answer checked out
        return ""

    def _count(self, peer: str, outcome: str, why: str) -> None:
        if self.on_outcome is not None:
            self.on_outcome(peer, outcome)
        before, self._last[peer] = self._last.get(peer), outcome
        if outcome in ("refused", "failed") and before != outcome:
            log.warning(
                "a peer gateway does not witness this gateway's audit checkpoints",
                extra={"peer": peer, "outcome": outcome, "error": why[:300]},
            )
        elif outcome in ("witnessed", "known") and before in ("refused", "failed"):
            log.info("a peer gateway witnesses audit checkpoints again", extra={"peer": peer})
