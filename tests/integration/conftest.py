"""A real gateway on port 0 in the test's event loop, and helpers to read rich errors."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pkcs11
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from gateway.app import Gateway
from gateway.hsm import Pkcs11Uri, token_session
from gateway.settings import Settings, load_settings
from gateway.store.intents import ReplayIntent
from gateway.store.sealing import write_private_file
from gateway.store.store import Store
from gateway.store.writer import OUTBOX

ROOT = Path(__file__).resolve().parents[2]


#: Zhongshan submits with token "t"; Shenzhen has an inbox (never reached in these tests); the
#: store's writer runs in its own process, as in production.
WRITER_PROCESS_ENV = {
    "TONGBAN_AUTH__MODE": "token",
    "TONGBAN_PARTNERS__ZS__CITY": "442000",
    "TONGBAN_PARTNERS__ZS__TOKEN": "t",
    "TONGBAN_PARTNERS__SZ__CITY": "440300",
    "TONGBAN_PARTNERS__SZ__INBOX__TRANSPORT": "grpc",
    "TONGBAN_PARTNERS__SZ__INBOX__TARGET": "127.0.0.1:9",
    "TONGBAN_STORE__WRITER": "process",
}


def make_settings(tmp_path: Path, **env: str) -> Settings:
    """Settings for a test gateway: port 0, data under tmp_path, no file watching."""
    base = {
        "TONGBAN_SERVER__PORT": "0",
        "TONGBAN_STORE__DATA_DIR": str(tmp_path / "data"),
        "TONGBAN_MAPPINGS__PATH": str(ROOT / "mappings"),
        "TONGBAN_MAPPINGS__WATCH": "false",
        "TONGBAN_METRICS__ENABLED": "false",
        "TONGBAN_AUTH__MODE": "none",
    }
    base.update(env)
    return load_settings(None, env=base)


class SteppingClock:
    """A writer's clock: each batch's entries get its time, one second after the last."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@contextlib.asynccontextmanager
async def running_store(url: str, clock: Callable[[], float] = time.time) -> AsyncIterator[Store]:
    """A store on ``url``, migrated, its writer started; stopped afterwards."""
    store = Store(url, clock=clock)
    store.migrate()
    store.start()
    try:
        yield store
    finally:
        await store.stop()


async def append_audit_entries(store: Store, n: int, *, one_by_one: bool = False) -> None:
    """``n`` audit entries: dead letters put in, then replayed (an entry each), in one
    transaction, or with ``one_by_one`` in one each (each at its own reading of the clock)."""
    for size in [1] * n if one_by_one else [n]:
        with store.engine.begin() as conn:
            for _ in range(size):
                conn.execute(
                    OUTBOX.insert().values(
                        exchange_id=uuid.uuid4().hex,
                        kind="case",
                        target_partner="sz",
                        target_city="440300",
                        state="dead",
                        attempts=1,
                        next_attempt_at=0.0,
                        lease_until=0.0,
                        last_error="x",
                        created_at=0.0,
                        dead_at=0.0,
                        replays=0,
                    )
                )
        assert len(await store.write(ReplayIntent("ops", None))) == size


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    gw = Gateway(make_settings(tmp_path))
    await gw.start()
    yield gw
    await gw.stop(grace=0)


@pytest.fixture
async def channel(gateway: Gateway) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(gateway.address) as ch:
        yield ch


def rich_error(err: grpc.aio.AioRpcError) -> dict[str, Any]:
    """The code, ErrorInfo reason and field violations of a failed call."""
    st = rpc_status.from_call(err)  # type: ignore[arg-type]
    out: dict[str, Any] = {"code": err.code(), "reason": None, "fields": [], "retry": None}
    assert st is not None, "the error carries no google.rpc.Status details"
    for d in st.details:
        if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            d.Unpack(info)
            assert info.domain == "tongban.v1"
            out["reason"] = info.reason
        elif d.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            d.Unpack(br)
            out["fields"] = [v.field for v in br.field_violations]
        elif d.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            ri = error_details_pb2.RetryInfo()
            d.Unpack(ri)
            out["retry"] = ri.retry_delay.ToTimedelta().total_seconds()
    return out


# -- a SoftHSM2 token (one per test session: the library reads SOFTHSM2_CONF once per process) --

MODULES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
)
MODULE = next((m for m in MODULES if Path(m).is_file()), None)
PIN = "4711-tongban"
TONGBAN = [sys.executable, "-m", "gateway.cli"]


@dataclass(frozen=True)
class Hsm:
    """A SoftHSM2 token, ``tongban``, in a folder of its own; its user PIN in ``pin``."""

    conf: Path
    pin: Path

    def uri(self, label: str, **extra: str) -> str:
        query = {"module-path": str(MODULE), "pin-source": str(self.pin), **extra}
        q = "&".join(f"{k}={v}" for k, v in query.items() if v)
        return f"pkcs11:token=tongban;object={label}?{q}"

    def session(self, rw: bool = False) -> contextlib.AbstractContextManager[pkcs11.Session]:
        return token_session(Pkcs11Uri.parse(self.uri("any")), rw=rw)


@pytest.fixture(scope="session")
def hsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hsm]:
    assert MODULE, "SoftHSM2 (Debian package softhsm2; `make system-deps` installs it) is required"
    folder = tmp_path_factory.mktemp("softhsm")
    (folder / "tokens").mkdir()
    conf = folder / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {folder / 'tokens'}\nobjectstore.backend = file\n")
    before = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)  # read by the library when it is initialized
    init = ["softhsm2-util", "--init-token", "--free", "--label", "tongban"]
    subprocess.run(
        [*init, "--pin", PIN, "--so-pin", "so-4711"],
        check=True,
        capture_output=True,
    )
    pin = folder / "pin"
    write_private_file(pin, f"{PIN}\n".encode())
    yield Hsm(conf, pin)
    if before is None:
        os.environ.pop("SOFTHSM2_CONF", None)
    else:
        os.environ["SOFTHSM2_CONF"] = before


def tongban(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``tongban ARGS`` in a process of its own, with ``env`` added to the environment."""
    return subprocess.run(
        [*TONGBAN, *args],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
    )
