"""Policy server and client: wire format, a real ``lfm-policy serve`` process, and abuse of it."""

from __future__ import annotations

import logging
import queue
import re
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import msgpack
import numpy as np
import pytest
from runtime_helpers import IMAGE_SPEC, LOWDIM_SPEC, random_window, tiny_policy
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from lfm_policy import Policy
from lfm_policy.errors import LfmPolicyError
from lfm_policy.runtime import protocol
from lfm_policy.runtime.client import PolicyClient, PolicyServerError
from lfm_policy.runtime.interface import ChunkPredictor, LocalPredictor, ObservationError, parse_solver
from lfm_policy.runtime.protocol import Limits, ProtocolError
from lfm_policy.runtime.serve_cli import read_token
from lfm_policy.runtime.server import PolicyServer, is_loopback

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


# ------------------------------------------------------------------------------------------ protocol
def _tagged(data: bytes, dtype: str, shape: list) -> bytes:
    arr = {b"__ndarray__": True, b"data": data, b"dtype": dtype, b"shape": shape}
    return msgpack.packb({"type": "x", "a": arr}, use_bin_type=True)


def test_protocol_round_trips_every_allowed_dtype():
    for name in ("bool", "uint8", "int8", "int16", "int32", "int64", "uint16", "uint32", "uint64",
                 "float16", "float32", "float64"):
        a = (np.arange(24).reshape(2, 3, 4) % 7).astype(name)
        b = protocol.decode(protocol.encode({"type": "x", "nested": {"a": a, "list": [a[0]]}}))["nested"]
        assert b["a"].dtype == a.dtype and b["a"].shape == a.shape and np.array_equal(b["a"], a), name
        assert b["a"].flags.writeable and np.array_equal(b["list"][0], a[0])
    big_endian = np.arange(3, dtype=">f8")  # sent little-endian
    assert np.array_equal(protocol.decode(protocol.encode({"type": "x", "a": big_endian}))["a"], big_endian)
    assert protocol.decode(protocol.encode({"type": "x", "s": np.float32(2.5), "e": np.zeros((0, 3))}))["s"] == 2.5


@pytest.mark.parametrize("data, match", [
    (_tagged(b"abc", "<f4", [1]), r"a: 3 data bytes for shape \(1,\)"),
    (_tagged(b"\0" * 8, "|O", [1]), r"dtype '\|O' is not allowed"),
    (_tagged(b"\0" * 8, "<c8", [1]), "not allowed"),
    (_tagged(b"\0" * 4, ">f4", [1]), "not allowed"),
    (_tagged(b"\0" * 4, "<f4", [-1]), "shape must be"),
    (_tagged(b"\0" * 4, "<f4", "4"), "shape must be"),
    (msgpack.packb({"type": "x", "a": {b"__ndarray__": True, b"dtype": "<f4", b"shape": [1]}}), "lacks field 'data'"),
    (b"\xc1\xff\x00", "not valid msgpack"),
    (protocol.encode({"type": "infer", "obs": {}})[:-3], "not valid msgpack"),
    (protocol.encode({"type": "x"}) + b"\x00", "trailing bytes"),
    (msgpack.packb([1, 2]), "must be a msgpack map"),
    (msgpack.packb({"kind": "infer"}), "lacks a str 'type'"),
    (msgpack.packb({"type": "x", "t": msgpack.ExtType(5, b"ab")}), "ExtType values are not supported"),
    (b"\x82\xa4type\xa1x\xa1a" + b"\x81\xa1a" * 20 + b"\xc0", "nested deeper than 8"),
    (b"\x82\xa4type\xa1x\xa1a" + b"\x81\xa1a" * 5000 + b"\xc0", "not valid msgpack"),
    ("text", "text frames"),
])
def test_protocol_rejects_bad_encodings(data, match):
    with pytest.raises(ProtocolError, match=match) as e:
        protocol.decode(data)
    assert isinstance(e.value, LfmPolicyError) and "\n" not in str(e.value)


def test_protocol_bounds_elements_and_refuses_unencodable():
    msg = protocol.encode({"type": "x", "a": np.zeros(600, np.uint8), "b": np.zeros(600, np.uint8)})
    with pytest.raises(ProtocolError, match="b: the message's arrays exceed the element limit"):
        protocol.decode(msg, Limits(max_elements=1000))
    for bad in (np.array([None, 1], dtype=object), np.array(["a"]), np.zeros(2, np.complex64), object()):
        with pytest.raises(ProtocolError, match="cannot"):
            protocol.encode({"type": "x", "a": bad})


# --------------------------------------------------------------------------- a real `lfm-policy serve`
@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(url, checkpoint dir) of an ``lfm-policy serve`` subprocess: tiny LFM policy, token, 1 MiB frames."""
    root = tmp_path_factory.mktemp("serve")
    ckpt = tiny_policy("lfm").save(root / "ckpt")
    (root / "token").write_text(f"  {TOKEN}\n")
    proc = subprocess.Popen([sys.executable, "-m", "lfm_policy.cli", "-v", "serve", str(ckpt), "--port", "0",
                             "--token-file", str(root / "token"), "--max-message-mb", "1"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines: queue.Queue[str] = queue.Queue()
    log: list[str] = []

    def drain():
        for line in proc.stderr:
            log.append(line)
            lines.put(line)

    threading.Thread(target=drain, daemon=True).start()
    url, deadline = None, time.monotonic() + 90
    while url is None and time.monotonic() < deadline and proc.poll() is None:
        try:
            m = re.search(r"policy server at (ws://127\.0\.0\.1:\d+): head=lfm NFE=4, token required",
                          lines.get(timeout=0.5))
            url = m and m[1]
        except queue.Empty:
            pass
    try:
        assert url, f"server did not start: {''.join(log)}"
        yield url, ckpt
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert proc.returncode == 0, "".join(log)  # SIGTERM is a clean stop
    assert not any("Traceback" in line for line in log), "".join(log)


@pytest.fixture(scope="module")
def local(served):
    return LocalPredictor(Policy.load(served[1]))


def test_metadata_describes_the_served_policy(served, local):
    with PolicyClient(served[0], token=TOKEN) as client:
        assert isinstance(client, ChunkPredictor)
        assert client.info.to_dict() | {"extra": {}} == local.info.to_dict()
        assert client.info.extra["checkpoint"] == str(served[1])
        meta = client.metadata()
        assert meta["version"] and meta["protocol"] == protocol.PROTOCOL_VERSION and meta["nfe"] == 4


def test_served_chunks_equal_local_ones_for_a_seed(served, local):
    window = random_window(LOWDIM_SPEC)
    with PolicyClient(served[0], token=TOKEN) as client:
        for seed in (3, 11):
            client.reset(seed)
            local.reset(seed)
            for _ in range(2):  # the episode's generator advances alike
                chunk = client.predict(window)
                assert chunk.dtype == np.float32 and chunk.shape == (8, 2)
                np.testing.assert_allclose(chunk, local.predict(window), rtol=0, atol=1e-6)
        assert set(client.last_timing) == {"encode_ms", "sample_ms", "server_ms", "round_trip_ms"}
        assert client.last_timing["round_trip_ms"] >= client.last_timing["server_ms"] > 0
        client.reset()  # unseeded episodes sample too
        assert np.isfinite(client.predict(window)).all()


def test_bad_observations_are_answered_naming_the_key(served):
    good = random_window(LOWDIM_SPEC)
    bad_windows = {
        r"missing key\(s\) \['goal_pos'\]": {"agent_pos": good["agent_pos"]},
        r"unknown key\(s\) \['extra'\]": {**good, "extra": np.zeros((2, 2), np.float32)},
        r"'agent_pos': expected shape \(2, 2\), got \(3, 2\)": {**good, "agent_pos": np.zeros((3, 2), np.float32)},
        "'goal_pos': expected real numbers, got dtype bool": {**good, "goal_pos": np.zeros((2, 2), bool)},
        "'agent_pos': contains NaN": {**good, "agent_pos": np.full((2, 2), np.nan, np.float32)},
    }
    with PolicyClient(served[0], token=TOKEN, validate=False) as client:
        for match, window in bad_windows.items():
            with pytest.raises(ObservationError, match=match):
                client.predict(window)
            assert client.predict(good).shape == (8, 2)  # the same connection still works
        for match, call in {
            "unknown message type 'fly'": lambda: client._request({"type": "fly"}, "fly"),
            r"unknown field\(s\) \['speed'\]": lambda: client._request({"type": "reset", "speed": 1}, "reset"),
            "lacks field 'obs'": lambda: client._request({"type": "infer"}, "chunk"),
            "'seed' must be an int": lambda: client._request({"type": "reset", "seed": "x"}, "reset"),
            r"'prefix' must have shape \(P, 2\)": lambda: client.predict(good, prefix=np.zeros((3, 5))),
            "'prefix_weights' must have shape": lambda: client.predict(good, prefix=np.zeros((3, 2)),
                                                                       prefix_weights=np.ones(2)),
        }.items():
            with pytest.raises(PolicyServerError, match=match):
                call()
        assert client.predict(good).shape == (8, 2)
    with PolicyClient(served[0], token=TOKEN) as client, pytest.raises(ObservationError, match="'agent_pos'"):
        client.predict({**good, "agent_pos": good["agent_pos"][:1]})  # checked before sending


def test_garbage_frames_get_error_replies(served):
    with connect(served[0], additional_headers=AUTH, compression=None) as ws:
        for frame in (b"\xc1 garbage \xff", protocol.encode({"type": "metadata"})[:-4], "a text frame",
                      msgpack.packb([1, 2, 3]), _tagged(b"abc", "<f4", [1])):
            ws.send(frame)
            reply = protocol.decode(ws.recv(timeout=5))
            assert reply["type"] == "error" and reply["kind"] == "protocol" and reply["error"], frame
        ws.send(protocol.encode({"type": "metadata", "id": "m1"}))
        reply = protocol.decode(ws.recv(timeout=5))
        assert reply["type"] == "metadata" and reply["id"] == "m1"


def test_oversized_message_closes_only_its_connection(served):
    with PolicyClient(served[0], token=TOKEN) as other:
        with connect(served[0], additional_headers=AUTH, compression=None, max_size=None) as ws:
            ws.send(b"\0" * (2 * 2**20))  # the server takes at most 1 MiB
            with pytest.raises(ConnectionClosed) as e:
                ws.recv(timeout=10)
            assert e.value.rcvd is not None and e.value.rcvd.code == 1009
        assert other.predict(random_window(LOWDIM_SPEC)).shape == (8, 2)
    with PolicyClient(served[0], token=TOKEN) as fresh:
        assert fresh.info.horizon == 8


def test_missing_or_wrong_token_is_refused(served):
    for token in (None, "wrong", TOKEN + "x"):
        with pytest.raises(LfmPolicyError, match="refused the connection: HTTP 401"):
            PolicyClient(served[0], token=token)


def test_two_clients_at_once_get_their_own_episodes(served, local):
    window = random_window(LOWDIM_SPEC, seed=5)
    expected = {}
    for seed in (1, 2):
        local.reset(seed)
        expected[seed] = [local.predict(window) for _ in range(4)]
    got, errors = {}, []

    def run(seed):
        try:
            with PolicyClient(served[0], token=TOKEN) as client:
                client.reset(seed)
                got[seed] = [client.predict(window) for _ in range(4)]
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(s,)) for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    for seed in (1, 2):
        np.testing.assert_allclose(np.stack(got[seed]), np.stack(expected[seed]), rtol=0, atol=1e-6)


def test_client_vanishing_mid_request_does_not_hurt_the_server(served):
    request = protocol.encode({"type": "infer", "obs": random_window(LOWDIM_SPEC)})
    for _ in range(3):
        with connect(served[0], additional_headers=AUTH, compression=None) as ws:
            ws.send(request)
            ws.socket.close()  # no close handshake: the reply has nowhere to go
    with PolicyClient(served[0], token=TOKEN) as client:
        assert client.predict(random_window(LOWDIM_SPEC)).shape == (8, 2)


# --------------------------------------------------------------------------------- in-process server
def _eventually(cond, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


class _SlowPredictor(LocalPredictor):
    def predict(self, window, **kw):
        time.sleep(1.0)
        return super().predict(window, **kw)


def test_event_loop_answers_while_a_chunk_is_computed():
    policy = tiny_policy("regression")
    with PolicyServer(lambda: _SlowPredictor(policy), port=0, ping_interval=None) as server:
        slow, fast = PolicyClient(server.url), PolicyClient(server.url)
        worker = threading.Thread(target=slow.predict, args=(random_window(LOWDIM_SPEC),))
        worker.start()
        time.sleep(0.2)
        t0 = time.perf_counter()
        fast.metadata()
        with pytest.raises(ObservationError):
            fast._request({"type": "infer", "obs": {}}, "chunk")
        assert time.perf_counter() - t0 < 0.5 and worker.is_alive()
        worker.join(10)
        assert slow.last_timing["server_ms"] >= 1000
        slow.close()
        fast.close()
        assert _eventually(lambda: server.stats["open"] == 0)
        assert server.stats["requests"] == 5 and server.stats["errors"] == 1


def test_images_and_prefix_travel_exactly():
    pytest.importorskip("lfm_policy.runtime.inpaint")
    policy = tiny_policy("lfm", image=True)
    window = random_window(IMAGE_SPEC)
    prefix, weights = np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2), np.array([1, 1, 0.5], np.float32)
    local = LocalPredictor(policy)
    with PolicyServer(policy, port=0) as server, PolicyClient(server.url) as client:
        assert client.info.image_keys == ("cam_image",)
        for kw in ({}, {"prefix": prefix, "prefix_weights": weights}):
            client.reset(7)
            local.reset(7)
            np.testing.assert_allclose(client.predict(window, **kw), local.predict(window, **kw), rtol=0, atol=1e-6)


def test_server_start_errors_and_exposed_host_warning(caplog):
    policy = tiny_policy("regression")
    with PolicyServer(policy, port=0, max_message_bytes=4096) as first:
        with pytest.raises(LfmPolicyError, match="cannot listen on 127.0.0.1"):
            PolicyServer(policy, port=first.port).start()
        with connect(first.url, compression=None) as ws, pytest.raises(ConnectionClosed):
            ws.send(b"\0" * 8192)
            ws.recv(timeout=5)
        assert _eventually(lambda: first.stats["oversized"] == 1)
    with pytest.raises(LfmPolicyError, match="token"):
        PolicyServer(policy, token="")
    with caplog.at_level(logging.WARNING, logger="lfm_policy.runtime.server"):
        PolicyServer(policy, host="0.0.0.0", port=0).start().stop()
    assert "without a token" in caplog.text
    assert is_loopback("localhost") and is_loopback("::1") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("robot.lan") and not is_loopback("")


# ----------------------------------------------------------------------------------------- serve CLI
def test_serve_cli_parses_solvers_and_token_files(tmp_path):
    from lfm_policy.flow.solvers import SolverConfig
    from lfm_policy.heads import DiffusionSampler, HeadConfig

    lfm = tiny_policy("lfm")
    assert parse_solver(lfm, None) is None
    assert parse_solver(lfm, "midpoint:1") == SolverConfig(method="midpoint", steps=1)
    assert parse_solver(lfm, "euler,rk4:1") == [SolverConfig(method="euler"), SolverConfig(method="rk4", steps=1)]
    with pytest.raises(LfmPolicyError, match="--solver"):
        parse_solver(lfm, "ddim:4")
    with pytest.raises(LfmPolicyError, match="solver"):
        parse_solver(lfm, "warp:2")
    # Only the config is read for these (a real diffusion head would import diffusers: seconds).
    head = HeadConfig(kind="diffusion")
    diffusion = SimpleNamespace(config=SimpleNamespace(head=head), head=SimpleNamespace())
    assert parse_solver(diffusion, "ddim:3") == DiffusionSampler("ddim", 3)
    assert parse_solver(diffusion, "ddpm") == DiffusionSampler("ddpm")
    for bad in ("ddpm:5", "midpoint"):
        with pytest.raises(LfmPolicyError, match="--solver"):
            parse_solver(diffusion, bad)
    (tmp_path / "empty").write_text(" \n")
    with pytest.raises(LfmPolicyError, match="empty"):
        read_token(tmp_path / "empty")
    with pytest.raises(LfmPolicyError, match="cannot read"):
        read_token(tmp_path / "nope")
    (tmp_path / "ok").write_text("abc\n")
    assert read_token(tmp_path / "ok") == "abc"


def test_serve_command_wires_checkpoint_solver_and_token(tmp_path, monkeypatch):
    from lfm_policy.cli import main

    ckpt = tiny_policy("lfm").save(tmp_path / "ckpt")
    (tmp_path / "token").write_text("abc\n")
    seen = {}
    monkeypatch.setattr(PolicyServer, "serve_forever", lambda self: seen.update(server=self))
    args = ["serve", str(ckpt), "--port", "0", "--token-file", str(tmp_path / "token"), "--max-message-mb", "0.5"]
    assert main([*args, "--solver", "rk4:1"]) == 0
    server = seen["server"]
    assert server.info.nfe == 8 and server.info.extra == {"checkpoint": str(ckpt), "solver_arg": "rk4:1"}
    assert server._auth == b"Bearer abc" and server.max_message_bytes == 2**19 and server.host == "127.0.0.1"
    assert main([*args, "--solver", "ddim:4"]) == 1 and main([*args, "--port", "70000"]) == 1
