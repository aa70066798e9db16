"""``tongban serve`` as an operator runs it: example config, health, reflection, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tongban.v1 import common_pb2, translation_pb2, translation_pb2_grpc

from .conftest import ROOT, TONGBAN, free_port, run


def wait_serving(address: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return
            except grpc.RpcError:
                time.sleep(0.2)
    raise AssertionError("server did not become SERVING")


def test_serve_example_config_then_sigterm(tmp_path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "TONGBAN_SERVER__PORT": str(port),
        "TONGBAN_STORE__DATA_DIR": str(tmp_path),
        "TONGBAN_METRICS__PORT": str(free_port()),
    }
    with subprocess.Popen(
        [*TONGBAN, "serve", "--config", "tongban.toml"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    ) as proc:
        _serve_and_stop(proc, port)


def _serve_and_stop(proc: subprocess.Popen[bytes], port: int) -> None:
    try:
        wait_serving(f"127.0.0.1:{port}", proc)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = translation_pb2_grpc.TranslationServiceStub(ch)
            body = (ROOT / "mappings/guangzhou/samples/enterprise/02-enterprise.json").read_bytes()
            resp = stub.Translate(
                translation_pb2.TranslateRequest(
                    record=common_pb2.ForeignRecord(schema="guangzhou.enterprise", json=body),
                    target_schema="shenzhen.enterprise",
                ),
                metadata=[("authorization", "Bearer dev-token-guangzhou")],
            )
            assert json.loads(resp.record.json)["uscc"] == json.loads(body)["credit_code"]
            # Without the token the call is refused before any handler runs.
            with pytest.raises(grpc.RpcError) as info:
                stub.Translate(translation_pb2.TranslateRequest(), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_config_errors_name_the_key(tmp_path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[server]\nport = 99999\nhots = "x"\n')
    out = run("serve", "--config", str(cfg))
    assert out.returncode == 2
    assert "server.port" in out.stderr
    assert "server.hots: unknown key" in out.stderr
    env_bad = run("serve", "--config", "tongban.toml", env={"TONGBAN_SERVER__PORT": "http"})
    assert env_bad.returncode == 2
    assert "server.port" in env_bad.stderr
    assert run("serve", "--config", str(tmp_path / "missing.toml")).returncode == 2


def test_an_event_loop_that_is_not_installed_is_refused_at_start(tmp_path) -> None:
    # server.event_loop = "uvloop" where uvloop cannot be imported: a clear error, exit 2,
    # before anything binds or opens the store.
    code = (
        "import sys; sys.modules['uvloop'] = None; "
        "from gateway.cli import main; sys.exit(main(['serve', '--config', 'tongban.toml']))"
    )
    out = subprocess.run(
        [TONGBAN[0], "-c", code],
        check=False,
        cwd=ROOT,
        env={
            **os.environ,
            "TONGBAN_SERVER__EVENT_LOOP": "uvloop",
            "TONGBAN_STORE__DATA_DIR": str(tmp_path),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "server.event_loop is 'uvloop' but uvloop is not installed" in out.stderr
    assert not (tmp_path / "tongban.db").exists()
