"""``tongban demo``: a real cross-city exchange on the embedded store, start to finish.

Zhongshan (442000) collects applications at its window for service items that Shenzhen
(440300) handles (异地代收代办):

1. the gateway and two real partner systems start (gRPC PartnerInboxService servers); Shenzhen's
   fails a share of calls with UNAVAILABLE, as a busy system does;
2. Zhongshan submits a batch of cases in Zhongshan's schema (one SubmitCases stream) and watches
   their events (WatchCases) in Zhongshan's codes;
3. Shenzhen receives each case in Shenzhen's schema, accepts it and completes it, reporting
   in Shenzhen's own status words (ReportStatus);
4. the demo checks that every case was delivered once, every status reached Zhongshan, and
   that the store holds no personal data in the clear (each case's record sealed with SM4-GCM
   under a development key made in the data directory), and prints an account.

With ``--federated`` each city runs its own gateway (federated mode, the X-Road model): Zhongshan
submits to Zhongshan's gateway, which delivers the canonical case to Shenzhen's gateway over
mutual TLS; Shenzhen's gateway delivers it to Shenzhen's system and carries Shenzhen's statuses
back. Every call, the cities' systems' included, then goes over mutual TLS with certificates
of a development CA made in the data directory.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import random
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from stdnum.cn import ric
from tqdm import tqdm

from tongban.v1 import case_exchange_pb2 as cx
from tongban.v1 import case_exchange_pb2_grpc as cx_grpc
from tongban.v1 import common_pb2

from .app import Gateway
from .audit import ChainReport, sort_checkpoints, verify_store_chain
from .audit_pkcs11 import Pkcs11Signer
from .audit_signing import generate_signing_key
from .certs import issue, make_ca
from .logs import configure_logging
from .partner_sim import InboxSimulator, start_simulator
from .ports import free_port
from .services.delivery import DeliveryObserver
from .settings import load_settings
from .store.chain_hash import HASH_NAMES
from .store.checkpoints import stored_checkpoints
from .store.reads import StoreReader
from .store.rekey import sealed_counts
from .store.sealing import generate_key, write_keyring
from .store.store import Store
from .store.witness import witnessed_checkpoints

__all__ = ["add_demo_command"]

ROOT = Path(__file__).resolve().parent.parent
SURNAMES = "陈李黄张王刘林何郭罗梁宋郑谢韩唐冯于董萧"
GIVEN = ["嘉怡", "志强", "晓明", "丽娟", "建华", "雅婷", "国栋", "思远", "慧敏", "俊杰"]
SZ_DISTRICTS = ["440303", "440304", "440305", "440306", "440307", "440308"]


def make_cases(n: int, seed: int = 2026) -> list[dict[str, Any]]:
    """``n`` realistic Zhongshan case records for Shenzhen residents (valid, generated IDs)."""
    rng = random.Random(seed)  # noqa: S311 - sample data, not crypto
    base = json.loads((ROOT / "mappings/zhongshan/samples/case/01-case.json").read_text("utf-8"))
    out = []
    for i in range(n):
        rec = copy.deepcopy(base)
        born = f"{rng.randint(1965, 2004)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
        sex = rng.choice("12")
        seq = rng.randrange(0, 500) * 2 + (1 if sex == "1" else 0)
        body = f"{rng.choice(SZ_DISTRICTS)}{born}{seq:03d}"
        rec["SBLSH"] = f"442000-2026-{100001 + i:06d}"
        rec["SQRMC"] = rng.choice(SURNAMES) + rng.choice(GIVEN)
        rec["SQRXB"] = sex
        rec["SQRZJHM"] = body + ric.calc_check_digit(body + "0")
        rec["SQRLXDH"] = f"13{rng.randint(0, 9)}{rng.randint(10000000, 99999999)}"
        rec["SQSJ"] = (
            f"202611{rng.randint(20, 24)}{rng.randint(9, 16):02d}{rng.randint(0, 59):02d}00"
        )
        rec["BJZT"] = "00"
        out.append(rec)
    return out


async def _shenzhen_handles(sim: InboxSimulator, city: _City, n: int, stop: asyncio.Event) -> int:
    """Shenzhen's clerks: accept then approve every received case, in Shenzhen's codes."""
    handled = 0
    meta = city.metadata
    async with city.channel() as ch:
        stub = cx_grpc.CaseExchangeServiceStub(ch)
        pending: list[asyncio.Task[None]] = []

        async def handle(exchange_id: str, record: dict[str, Any]) -> None:
            await asyncio.sleep(random.uniform(0.01, 0.1))  # noqa: S311 - clerk think time
            await stub.ReportStatus(
                cx.ReportStatusRequest(
                    request_id=f"sz-accept-{exchange_id}",
                    exchange_id=exchange_id,
                    status_code="ACCEPTED",
                    note="材料齐全，予以受理",
                ),
                metadata=meta,
            )
            done = dict(record)
            done["completion"] = {
                "completedAt": "2026-11-25T16:00:00+08:00",
                "licence": {"name": "营业执照", "number": f"92440300{exchange_id[:10].upper()}"},
                "issuer": "深圳市市场监督管理局",
                "mailed": True,
            }
            await stub.ReportStatus(
                cx.ReportStatusRequest(
                    request_id=f"sz-approve-{exchange_id}",
                    exchange_id=exchange_id,
                    status_code="APPROVED",
                    note="准予登记",
                    record=common_pb2.ForeignRecord(
                        schema="shenzhen.case", json=json.dumps(done, ensure_ascii=False).encode()
                    ),
                ),
                metadata=meta,
            )

        while handled < n and not stop.is_set():
            item = await sim.received.get()
            if item.kind != "case":
                continue
            handled += 1
            pending.append(asyncio.create_task(handle(item.key, item.payload["record"])))
        await asyncio.gather(*pending)
    return handled


@dataclass
class _City:
    """How a city's system reaches its gateway."""

    address: str
    channel: Callable[[], grpc.aio.Channel]
    metadata: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class _Topology:
    """The gateways the demo runs and how each city's system reaches its own."""

    zhongshan: _City
    shenzhen: _City
    gateways: list[Gateway]
    shenzhen_deliveries: DeliveryObserver  # of the gateway delivering to Shenzhen's system
    lines: list[str]  # what the demo prints of it
    database: Path
    between: DeliveryObserver | None = None  # of Shenzhen's gateway, delivering to Zhongshan's


_TIMINGS = {
    "TONGBAN_MAPPINGS__PATH": str(ROOT / "mappings"),
    "TONGBAN_MAPPINGS__WATCH": "false",
    "TONGBAN_DELIVERY__RETRY__INITIAL_BACKOFF_SECONDS": "0.05",
    "TONGBAN_DELIVERY__RETRY__MAX_BACKOFF_SECONDS": "1",
    "TONGBAN_DELIVERY__RETRY__MAX_ATTEMPTS": "30",
    "TONGBAN_DELIVERY__CIRCUIT__RESET_SECONDS": "0.5",
    "TONGBAN_LOG__LEVEL": "WARNING",
}


#: The id and cipher of the development key the demo's stores are sealed with.
DEMO_KEY = ("demo", "sm4-gcm")


def _demo_keys(
    data: Path, signing_key: str | None = None, wrapping: str | None = None
) -> dict[str, str]:
    """Settings sealing the store's personal data with a development key made in ``data``
    (written wrapped by ``wrapping``, a PKCS#11 URI: ``--wrap-keys-with``), hashing the audit
    chain with SM3 and signing its checkpoints with another key, or with ``signing_key`` (a
    PEM file or a PKCS#11 URI: ``--audit-signing-key``)."""
    path = data / "keys.toml"
    kid, algorithm = DEMO_KEY
    write_keyring(path, kid, {kid: (algorithm, generate_key(algorithm))}, wrapping)
    if signing_key is None:
        # SM2 (GB/T 32918.2), as the records are sealed with SM4: China's algorithms throughout.
        signing = data / "audit-signing.pem"
        generate_signing_key(signing, "sm2")
        signing_key = str(signing)
    return {
        "TONGBAN_STORE__KEYS_FILE": str(path),
        "TONGBAN_AUDIT__SIGNING_KEY": signing_key,
        # SM3 (GB/T 32905) for the chain's hashes, as SM4 seals and SM2 signs.
        "TONGBAN_AUDIT__HASH_ALGORITHM": "sm3",
    }


async def _signed_chain(gateway: Gateway) -> tuple[ChainReport, int, str]:
    """Sign the gateway's audit chain now, then verify it against its checkpoints: the chain's
    report, the length the last valid checkpoint covers, and the signing key's id."""
    await gateway.checkpoint()
    signer = gateway.settings.audit.signer
    assert signer is not None  # the demo's settings set it
    keys = {signer.key_id: signer.public_key}

    def check(reader: StoreReader) -> tuple[ChainReport, int]:
        signed = sort_checkpoints(stored_checkpoints(reader.engine), keys)
        if signed.problems:
            return ChainReport(False, 0, reason="; ".join(signed.problems)), 0
        return verify_store_chain(reader, signed.trusted), max(signed.trusted, default=0)

    store = gateway.services.store
    report, covered = await store.read(check, store.reader)
    return report, covered, signer.key_id


async def _witnessed(gateways: list[Gateway]) -> dict[str, int]:
    """Each gateway signs its chain's head and hands it to its peer (gateway.services.witness);
    how many of each gateway's checkpoints the other holds, by the gateway's city."""
    for gateway in gateways:
        await gateway.checkpoint()
    held: dict[str, int] = {}
    for gateway in gateways:
        store = gateway.services.store
        for w in await store.read(witnessed_checkpoints, store.reader.engine):
            city = "Zhongshan" if w.peer == "zs-gateway" else "Shenzhen"
            held[city] = held.get(city, 0) + 1
    return {city: held.get(city, 0) for city in ("Zhongshan", "Shenzhen")}


def _hub(
    data: Path,
    port: int,
    metrics_port: int,
    zs_port: int,
    sz_port: int,
    signing_key: str | None = None,
    wrapping: str | None = None,
) -> _Topology:
    """One gateway for both cities; their systems call it with development tokens."""
    env = {
        **_TIMINGS,
        **_demo_keys(data, signing_key, wrapping),
        "TONGBAN_SERVER__PORT": str(port),
        "TONGBAN_STORE__DATA_DIR": str(data),
        "TONGBAN_METRICS__PORT": str(metrics_port),
        "TONGBAN_PARTNERS__ZHONGSHAN__CITY": "442000",
        "TONGBAN_PARTNERS__ZHONGSHAN__TOKEN": "demo-zhongshan",
        "TONGBAN_PARTNERS__ZHONGSHAN__INBOX__TRANSPORT": "grpc",
        "TONGBAN_PARTNERS__ZHONGSHAN__INBOX__TARGET": f"127.0.0.1:{zs_port}",
        "TONGBAN_PARTNERS__SHENZHEN__CITY": "440300",
        "TONGBAN_PARTNERS__SHENZHEN__TOKEN": "demo-shenzhen",
        "TONGBAN_PARTNERS__SHENZHEN__INBOX__TRANSPORT": "grpc",
        "TONGBAN_PARTNERS__SHENZHEN__INBOX__TARGET": f"127.0.0.1:{sz_port}",
    }
    settings = load_settings(None, env=env)
    configure_logging(settings.log.level, "text")
    gateway = Gateway(settings)
    address = gateway.address

    def channel() -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(address)

    return _Topology(
        _City(address, channel, [("authorization", "Bearer demo-zhongshan")]),
        _City(address, channel, [("authorization", "Bearer demo-shenzhen")]),
        [gateway],
        gateway.services.delivery.observer,
        [f"  gateway {address}; partner inboxes: Zhongshan :{zs_port}, Shenzhen :{sz_port}"],
        data / "tongban.db",
    )


#: The two gateways of a development federation, each with its city's system.
GATEWAYS = ("zs-gateway", "sz-gateway")


def make_federation_pki(folder: Path, systems: tuple[str, ...]) -> Path:
    """A development CA in ``folder`` with, for each of :data:`GATEWAYS`, a server certificate
    (``<name>-server.pem``, for localhost) and a client certificate (``<name>.pem``, presented
    to the other's inbox), and a client certificate for each city system in ``systems``."""
    make_ca(folder)
    for name in GATEWAYS:
        issue(folder, f"{name}-server", server=True, hosts=["localhost", "127.0.0.1"])
        issue(folder, name)
    for name in systems:
        issue(folder, name)
    return folder


def peer_gateway_env(
    pki: Path, me: str, port: int, own: tuple[str, str, int], peer: tuple[str, str, int]
) -> dict[str, str]:
    """Settings (``TONGBAN_*``) of gateway ``me`` of a development federation on
    :func:`make_federation_pki`'s certificates: mutual TLS on ``port``, its city's system
    ``own`` (partner id, city, inbox port) and the other city's gateway ``peer`` (partner id,
    city, port) as a peer."""
    oid, ocity, oport = own
    pid, pcity, pport = peer
    o, p = f"TONGBAN_PARTNERS__{oid.upper()}__", f"TONGBAN_PARTNERS__{pid.upper()}__"
    return {
        "TONGBAN_SERVER__PORT": str(port),
        "TONGBAN_AUTH__MODE": "mtls",
        "TONGBAN_TLS__CERT": str(pki / f"{me}-server.pem"),
        "TONGBAN_TLS__KEY": str(pki / f"{me}-server-key.pem"),
        "TONGBAN_TLS__CLIENT_CA": str(pki / "ca.pem"),
        f"{o}CITY": ocity,
        f"{o}INBOX__TRANSPORT": "grpc",
        f"{o}INBOX__TARGET": f"127.0.0.1:{oport}",
        # The city's system (gateway.partner_sim) reads a change recorded late as history.
        f"{o}INBOX__LATE_STATUSES": "true",
        f"{p}CITY": pcity,
        f"{p}PEER": "true",
        f"{p}INBOX__TRANSPORT": "grpc",
        f"{p}INBOX__TARGET": f"127.0.0.1:{pport}",
        f"{p}INBOX__TLS": "true",
        f"{p}INBOX__CA": str(pki / "ca.pem"),
        f"{p}INBOX__CLIENT_CERT": str(pki / f"{me}.pem"),
        f"{p}INBOX__CLIENT_KEY": str(pki / f"{me}-key.pem"),
    }


def _federation(data: Path, port: int, metrics_port: int, zs_port: int, sz_port: int) -> _Topology:
    """A gateway per city, peers over mutual TLS; each city's system calls its own gateway
    with its own certificate."""
    pki = make_federation_pki(data / "pki", ("zhongshan", "shenzhen"))
    ports = {"zs-gateway": port or free_port(), "sz-gateway": free_port()}
    keys = _demo_keys(data)
    # Each city's gateway signs its audit chain with its own key, and witnesses the other's
    # checkpoints with the other's public key.
    signing = {me: data / f"{me}-audit-signing.pem" for me in ports}
    for path in signing.values():
        generate_signing_key(path, "sm2")

    def env(me: str, own: tuple[str, str, int], peer: tuple[str, str]) -> dict[str, str]:
        public = f"{signing[peer[0]]}.pub"
        return {
            **_TIMINGS,
            **keys,
            **peer_gateway_env(pki, me, ports[me], own, (*peer, ports[peer[0]])),
            "TONGBAN_STORE__DATA_DIR": str(data / me),
            "TONGBAN_METRICS__PORT": str(metrics_port if me == "zs-gateway" else free_port()),
            "TONGBAN_AUDIT__SIGNING_KEY": str(signing[me]),
            f"TONGBAN_PARTNERS__{peer[0].upper()}__AUDIT_PUBLIC_KEYS": json.dumps([public]),
        }

    zs_settings = load_settings(
        None, env=env("zs-gateway", ("zhongshan", "442000", zs_port), ("sz-gateway", "440300"))
    )
    sz_settings = load_settings(
        None, env=env("sz-gateway", ("shenzhen", "440300", sz_port), ("zs-gateway", "442000"))
    )
    configure_logging(zs_settings.log.level, "text")
    zs_gw, sz_gw = Gateway(zs_settings), Gateway(sz_settings)

    def city(gateway: Gateway, name: str) -> _City:
        creds = grpc.ssl_channel_credentials(
            root_certificates=(pki / "ca.pem").read_bytes(),
            private_key=(pki / f"{name}-key.pem").read_bytes(),
            certificate_chain=(pki / f"{name}.pem").read_bytes(),
        )
        address = gateway.address
        return _City(address, lambda: grpc.aio.secure_channel(address, creds))

    return _Topology(
        city(zs_gw, "zhongshan"),
        city(sz_gw, "shenzhen"),
        [sz_gw, zs_gw],
        sz_gw.services.delivery.observer,
        [
            f"  Zhongshan's gateway {zs_gw.address} and Shenzhen's gateway {sz_gw.address}, "
            f"peers over mutual TLS (certificates in {pki})",
            f"  city systems' inboxes: Zhongshan :{zs_port}, Shenzhen :{sz_port}",
        ],
        data / "zs-gateway" / "tongban.db",
        sz_gw.services.delivery.observer,
    )


def _sealed_counts(database: Path) -> dict[str, dict[str, int]]:
    """Per column of personal data in the store at ``database``, values by sealing key."""
    store = Store(f"sqlite:///{database}")
    try:
        return sealed_counts(store.engine)
    finally:
        store.dispose()


async def _run(args: argparse.Namespace) -> int:
    for option, given in (
        ("--audit-signing-key", args.audit_signing_key),
        ("--wrap-keys-with", args.wrap_keys_with),
    ):
        if given and args.federated:
            print(f"error: {option} is for the hub demo, not --federated", file=sys.stderr)
            return 2
    data = Path(args.data_dir).resolve()
    if data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True)
    zs_sim = InboxSimulator(data / "zhongshan-inbox.db")
    sz_sim = InboxSimulator(data / "shenzhen-inbox.db", fail_rate=args.fail_rate, seed=11)
    zs_server, zs_port = await start_simulator(zs_sim)
    sz_server, sz_port = await start_simulator(sz_sim)
    metrics_port = args.metrics_port or free_port()
    gw_port = args.port or free_port()
    if args.federated:
        topology = _federation(data, gw_port, metrics_port, zs_port, sz_port)
    else:
        topology = _hub(
            data,
            gw_port,
            metrics_port,
            zs_port,
            sz_port,
            args.audit_signing_key,
            args.wrap_keys_with,
        )
    for gateway in topology.gateways:
        await gateway.start()
    observer = topology.shenzhen_deliveries  # counts for the account, feeds /metrics
    zhongshan = topology.zhongshan
    n = args.cases
    out = sys.stdout
    print(f"Tongban demo: Zhongshan (442000) submits {n} cases for Shenzhen (440300)", file=out)
    for line in topology.lines:
        print(line, file=out)
    print(f"  Shenzhen's system fails {args.fail_rate:.0%} of calls transiently", file=out)
    started = time.monotonic()
    stop = asyncio.Event()
    zs_meta = zhongshan.metadata
    final = {"06", "07", "08", "03", "09"}
    seen: dict[str, list[str]] = {}
    ok = True
    async with zhongshan.channel() as ch:
        stub = cx_grpc.CaseExchangeServiceStub(ch)
        watch = stub.WatchCases(cx.WatchCasesRequest(from_beginning=True), metadata=zs_meta)
        shenzhen = asyncio.create_task(_shenzhen_handles(sz_sim, topology.shenzhen, n, stop))
        cases = make_cases(n)

        async def requests() -> Any:
            for i, rec in enumerate(cases):
                yield cx.SubmitCasesRequest(
                    case_request=cx.SubmitCaseRequest(
                        request_id=f"zs-demo-{i}",
                        target_city="440300",
                        foreign=common_pb2.ForeignRecord(
                            schema="zhongshan.case",
                            json=json.dumps(rec, ensure_ascii=False).encode(),
                        ),
                    )
                )

        submitted = await stub.SubmitCases(requests(), metadata=zs_meta)
        ids = {r.response.exchange_id for r in submitted.results if r.response.exchange_id}
        print(
            f"  submitted: {submitted.accepted_count} accepted, {submitted.rejected_count} rejected "
            f"({time.monotonic() - started:.2f}s)",
            file=out,
        )
        bar = tqdm(
            total=len(ids),
            desc="  completed in Shenzhen, seen by Zhongshan",
            unit="case",
            file=sys.stderr,
            disable=args.no_progress or not sys.stderr.isatty(),
            leave=False,
        )
        done: set[str] = set()
        try:
            async with asyncio.timeout(args.timeout):
                async for msg in watch:
                    ev = msg.event
                    if ev.exchange_id not in ids or ev.late:  # late: history, not the flow
                        continue
                    seen.setdefault(ev.exchange_id, []).append(ev.status_code)
                    if ev.status_code in final and ev.exchange_id not in done:
                        done.add(ev.exchange_id)
                        bar.update(1)
                    if len(done) == len(ids):
                        break
        except TimeoutError:
            ok = False
            print(f"  timed out after {args.timeout}s", file=out)
        finally:
            bar.close()
            watch.cancel()
        stop.set()
        try:
            async with asyncio.timeout(10):
                await shenzhen
        except TimeoutError:
            shenzhen.cancel()
        # Zhongshan's inbox is told of every status change too (DeliverStatus, in its codes).
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(zs_sim.applied("status")) < 3 * len(ids):
            await asyncio.sleep(0.1)
    elapsed = time.monotonic() - started
    sealed = _sealed_counts(topology.database)
    chain, covered, signing_key = await _signed_chain(topology.gateways[0])
    signer = topology.gateways[0].settings.audit.signer
    in_token = isinstance(signer, Pkcs11Signer)
    signed_with = "SM2" if signer is not None and signer.algorithm == "sm2" else "Ed25519"
    keyring = topology.gateways[0].settings.store.keyring
    wrapped = ", wrapped by a key in a PKCS#11 token" if keyring and keyring.wrapping else ""
    witnessed = await _witnessed(topology.gateways) if args.federated else {}
    delivered = sz_sim.applied("case")
    duplicates = sum(1 for c in delivered.values() if c > 1)
    flow = Counter(" → ".join(v) for v in seen.values())
    retries = observer.attempts.get(("440300", "retryable"), 0)
    print("\nAccount", file=out)
    print(f"  cases sent by Zhongshan ........ {n}", file=out)
    print(f"  accepted by the gateway ........ {submitted.accepted_count}", file=out)
    print(
        f"  delivered to Shenzhen .......... {len(delivered)} (in shenzhen.case; "
        f"{sum(delivered.values()) - len(delivered)} redeliveries dropped by the idempotency key)",
        file=out,
    )
    print(
        f"  transient failures retried ..... {retries} (Shenzhen failed {sz_sim.failures_injected} "
        f"of {sz_sim.calls} calls)",
        file=out,
    )
    print(
        f"  dead letters ................... {observer.attempts.get(('440300', 'permanent'), 0)}",
        file=out,
    )
    print(
        "  statuses seen by Zhongshan (its codes: 00 已提交, 01 已接收, 02 已受理, 06 准予许可):",
        file=out,
    )
    for path, count in flow.most_common():
        print(f"    {count:>4} × {path}", file=out)
    print(f"  status updates in Zhongshan's inbox: {len(zs_sim.applied('status'))}", file=out)
    if topology.between is not None:
        back = topology.between.attempts
        print(
            f"  statuses from Shenzhen's gateway to Zhongshan's: {back.get(('442000', 'ok'), 0)} "
            f"delivered, {back.get(('442000', 'retryable'), 0)} retried (out of order or busy)",
            file=out,
        )
    kid, algorithm = DEMO_KEY
    records, notes = sealed.get("cases.canonical", {}), sealed.get("events.note", {})
    clear = records.get("", 0) + notes.get("", 0)
    print(
        f"  personal data at rest .......... {records.get(kid, 0)} case records and "
        f"{notes.get(kid, 0)} notes sealed ({algorithm}, key {kid!r}{wrapped}), {clear} in the "
        "clear",
        file=out,
    )
    entries = chain.after + chain.checked
    print(
        f"  audit chain .................... {entries} entries hashed with "
        f"{HASH_NAMES[chain.algorithm]}, "
        + (
            f"intact; signed up to entry {covered} ({signed_with} checkpoint, key {signing_key}"
            + (", in a PKCS#11 token)" if in_token else ")")
            if chain.ok
            else f"BROKEN at entry {chain.broken_seq}: {chain.reason}"
        ),
        file=out,
    )
    if args.federated:
        print(
            "  witnessed by the peer .......... "
            + "; ".join(f"{who}'s chain: {n} checkpoint(s)" for who, n in witnessed.items())
            + " held by the other city's gateway",
            file=out,
        )
    print(f"  time taken ..................... {elapsed:.2f}s", file=out)
    print(f"  database ....................... {topology.database}", file=out)
    print(f"  metrics ........................ http://127.0.0.1:{metrics_port}/metrics", file=out)
    complete = (
        len(done) == len(ids) == n
        and len(delivered) == n
        and duplicates == 0
        and all(v[:1] == ["00"] and v[-1] == "06" for v in seen.values())
        and records.get(kid, 0) == n
        and clear == 0
        and chain.ok
        and covered > 0
        and all(witnessed.values())
    )
    ok = ok and complete
    print(
        "\nresult: "
        + (
            "every case delivered once and completed; every status reached Zhongshan"
            if ok
            else "INCOMPLETE (see above)"
        ),
        file=out,
    )
    if args.keep_running:
        try_it = (
            f"grpcurl -cacert {data / 'pki/ca.pem'} -cert {data / 'pki/zhongshan.pem'} "
            f"-key {data / 'pki/zhongshan-key.pem'} {zhongshan.address}"
            if args.federated
            else f"grpcurl -plaintext -H 'authorization: Bearer demo-zhongshan' {zhongshan.address}"
        )
        print(
            f"\nStill running (Ctrl-C to stop); metrics at http://127.0.0.1:{metrics_port}/metrics. "
            f"Try: {try_it} tongban.v1.CaseExchangeService/ListCases",
            file=out,
            flush=True,
        )
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            pass
    for gateway in reversed(topology.gateways):
        await gateway.stop(grace=1)
    await zs_server.stop(0)
    await sz_server.stop(0)
    zs_sim.close()
    sz_sim.close()
    return 0 if ok else 1


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo."""
    try:
        return asyncio.run(_run(args))
    except KeyboardInterrupt:
        return 0


def add_demo_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``demo``."""
    p = sub.add_parser(
        "demo",
        help="run a real Zhongshan -> Shenzhen case exchange end to end",
        description=(__doc__ or "").split("\n\n")[0],
    )
    p.add_argument("--cases", type=int, default=40, help="cases to submit (default 40)")
    p.add_argument(
        "--fail-rate",
        type=float,
        default=0.3,
        help="share of Shenzhen's calls that fail transiently (default 0.3)",
    )
    p.add_argument(
        "--data-dir", default="data/demo", help="where the store lives (default data/demo)"
    )
    p.add_argument(
        "--port",
        type=int,
        default=0,
        help="gateway port, Zhongshan's with --federated (default: any free port)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="metrics port, Zhongshan's gateway's with --federated (default: any free)",
    )
    p.add_argument("--timeout", type=float, default=120, help="give up after this many seconds")
    p.add_argument("--keep-running", action="store_true", help="leave everything up afterwards")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (on a terminal)")
    p.add_argument(
        "--federated",
        action="store_true",
        help="a gateway per city, peers over mutual TLS (federated mode) instead of one hub",
    )
    p.add_argument(
        "--audit-signing-key",
        metavar="KEY",
        help="sign the hub's audit checkpoints with this key (a PEM file, or a PKCS#11 URI "
        "naming a key in a hardware security module) instead of a development key",
    )
    p.add_argument(
        "--wrap-keys-with",
        metavar="URI",
        help="write the hub's development sealing key wrapped by this AES key in a hardware "
        "security module (a PKCS#11 URI; `tongban db keys wrap URI --generate` makes one)",
    )
    p.set_defaults(func=cmd_demo)
