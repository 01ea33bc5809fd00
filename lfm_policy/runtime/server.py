"""Policy server: one loaded policy answering action-chunk requests over WebSockets (msgpack frames).

Why WebSockets + msgpack (not gRPC, not plain HTTP): no code generation or ``.proto`` files — a message
is a msgpack map and an array is a tagged map of raw bytes (:mod:`lfm_policy.runtime.protocol`); binary
frames with a built-in size limit (``max_size``: an oversized frame closes that connection with code
1009); asyncio serves many clients in one thread; ping/pong keepalive detects dead robots; and it is the
same wire choice as openpi, so its robot-side clients are familiar. gRPC would need protobuf stubs for
every message and a generated client on the robot.

Design:

* Each connection gets its own predictor (by default a :class:`~lfm_policy.runtime.interface.LocalPredictor`
  over the one shared policy — light: it holds only the episode's noise generator), so ``reset(seed)``
  on one robot never changes another's noise.
* Inference runs off the event loop in a single worker thread, so while a chunk is computed the loop
  keeps answering other clients' metadata, resets, malformed requests and keepalive pings; chunks of
  several clients queue for that one thread (one policy, no concurrent forward passes).
* Every request is checked (:func:`~lfm_policy.runtime.protocol.decode`, then
  :func:`~lfm_policy.runtime.interface.validate_window`) and answered with an ``error`` message naming
  the key or field; nothing a client sends crashes the server or touches other connections. A client
  that disconnects while its chunk is computed loses the reply silently.
* Optional shared-secret token: clients send ``Authorization: Bearer <token>``; a missing or wrong one is
  refused with HTTP 401 during the handshake (compared with :func:`hmac.compare_digest`). The server
  binds to 127.0.0.1 unless told otherwise and warns when it listens elsewhere without a token.

    server = PolicyServer(Policy.load(ckpt), port=0).start()   # background thread (tests, notebooks)
    print(server.url); ...; server.stop()
    PolicyServer(policy, host="0.0.0.0", token=secret).serve_forever()   # blocking (``lfm-policy serve``)
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from typing import Any

import numpy as np
from torch import nn
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

import lfm_policy
from lfm_policy.errors import LfmPolicyError
from lfm_policy.runtime import protocol
from lfm_policy.runtime.interface import ChunkPredictor, LocalPredictor, ObservationError, policy_info, validate_window
from lfm_policy.runtime.protocol import DEFAULT_LIMITS, Limits, ProtocolError

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8765
DEFAULT_MAX_MESSAGE_BYTES = 32 * 2**20


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` only accepts connections from this machine (``localhost``, 127.x, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


class PolicyServer:
    """Serve one policy to any number of WebSocket clients (:class:`~lfm_policy.runtime.client.PolicyClient`).

    Args:
        policy: A :class:`lfm_policy.Policy` (each connection gets ``LocalPredictor(policy, solver=...)``),
            or a factory returning a fresh :class:`ChunkPredictor` per connection.
        host: Interface to bind (127.0.0.1: this machine only; 0.0.0.0: every interface).
        port: TCP port (0: a free one; read :attr:`port` after :meth:`start`).
        token: Shared secret clients must send as ``Authorization: Bearer <token>`` (None: no check).
        max_message_bytes: Largest frame accepted; a bigger one closes that connection (code 1009).
        solver: Sampling solver(s) of the default predictors (None: the checkpoint's own).
        limits: Nesting and element bounds of decoded messages.
        ping_interval: Seconds between keepalive pings (None: no keepalive).
        extra: Facts added to ``info.extra`` of the default predictors (checkpoint path, solver text).

    Attributes:
        info: The :class:`PolicyInfo` served (every request is validated against it).
        port: The bound port once serving (None before).
        stats: ``connections``, ``open``, ``requests``, ``errors`` (error replies), ``refused`` (bad token) and
            ``oversized`` (connections closed for a too large message) counters.

    """

    def __init__(self, policy: nn.Module | Callable[[], ChunkPredictor], *, host: str = "127.0.0.1",
                 port: int = DEFAULT_PORT, token: str | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, solver: Any = None,
                 limits: Limits = DEFAULT_LIMITS, ping_interval: float | None = 20.0, **extra: Any):
        if isinstance(policy, nn.Module):
            info = policy_info(policy, solver, **extra)  # once: every connection's predictor shares it
            self._factory: Callable[[], ChunkPredictor] = lambda: LocalPredictor(policy, solver=solver, info=info)
        elif callable(policy):
            self._factory = policy
        else:
            raise LfmPolicyError(f"PolicyServer needs a Policy or a predictor factory, got {type(policy).__name__}")
        if token is not None and (not token or not token.isascii() or not token.isprintable()):
            raise LfmPolicyError("token must be a non-empty string of printable ASCII characters")
        if max_message_bytes < 1024:
            raise LfmPolicyError(f"max_message_bytes must be ≥ 1024, got {max_message_bytes}")
        self.host, self.requested_port, self.max_message_bytes = host, int(port), int(max_message_bytes)
        self.limits, self.ping_interval = limits, ping_interval
        self._auth = None if token is None else f"Bearer {token}".encode()
        self.info = self._factory().info
        meta = {"type": "metadata", **self.info.to_dict(), "version": lfm_policy.__version__,
                "protocol": protocol.PROTOCOL_VERSION}
        protocol.encode(meta)  # fails here, not per request, if info.extra holds something msgpack cannot
        self._metadata = meta
        self.port: int | None = None
        self.stats = {"connections": 0, "open": 0, "requests": 0, "errors": 0, "refused": 0, "oversized": 0}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def url(self) -> str:
        """``ws://host:port`` of the running server (the bound port)."""
        host = self.host or "0.0.0.0"
        host = f"[{host}]" if ":" in host else host
        return f"ws://{host}:{self.port if self.port is not None else self.requested_port}"

    # ------------------------------------------------------------------------------ run and stop
    def serve_forever(self) -> None:
        """Serve in this thread until SIGINT/SIGTERM (main thread) or :meth:`stop` from another thread.

        Raises:
            LfmPolicyError: The address cannot be bound (in use, no such interface).

        """
        try:
            asyncio.run(self._main(None, threading.current_thread() is threading.main_thread()))
        except OSError as e:
            raise LfmPolicyError(f"cannot listen on {self.host}:{self.requested_port}: {e}") from None

    run = serve_forever

    def start(self, timeout_s: float = 30.0) -> PolicyServer:
        """Serve in a background (daemon) thread; returns once the port is bound (``self.port``)."""
        if self._thread is not None:
            raise LfmPolicyError("server already started")
        ready = threading.Event()
        self._thread = threading.Thread(target=self._thread_main, args=(ready,), name="policy-server", daemon=True)
        self._thread.start()
        if not ready.wait(timeout_s):
            raise LfmPolicyError(f"policy server did not start within {timeout_s} s")
        if self._error is not None:
            self._thread = None
            raise LfmPolicyError(f"cannot listen on {self.host}:{self.requested_port}: {self._error}")
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Close every connection and stop serving (from any thread; no-op when not running)."""
        loop, event = self._loop, self._stop_event
        if loop is not None and event is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # loop closed meanwhile
                pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
            self._thread = None

    def __enter__(self) -> PolicyServer:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _thread_main(self, ready: threading.Event) -> None:
        try:
            asyncio.run(self._main(ready, False))
        except BaseException as e:  # noqa: BLE001 - reported by start()
            self._error = e
            ready.set()

    async def _main(self, ready: threading.Event | None, handle_signals: bool) -> None:
        self._loop, self._stop_event = asyncio.get_running_loop(), asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy-infer")
        try:
            async with serve(self._handler, self.host, self.requested_port, compression=None,
                             max_size=self.max_message_bytes, ping_interval=self.ping_interval,
                             process_request=self._authorize if self._auth is not None else None) as server:
                self.port = int(next(iter(server.sockets)).getsockname()[1])
                if not is_loopback(self.host) and self._auth is None:
                    logger.warning("policy server listens on %s without a token: anyone who reaches this port "
                                   "can drive the policy (pass a token)", self.host or "every interface")
                extra = self.info.extra.get("checkpoint")
                logger.info("policy server at %s: head=%s NFE=%s%s%s", self.url, self.info.head, self.info.nfe,
                            ", token required" if self._auth is not None else "", f", {extra}" if extra else "")
                if handle_signals:
                    for sig in (signal.SIGINT, signal.SIGTERM):
                        try:
                            self._loop.add_signal_handler(sig, self._stop_event.set)
                        except (NotImplementedError, RuntimeError):  # not on this platform
                            pass
                if ready is not None:
                    ready.set()
                await self._stop_event.wait()
        finally:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._loop = None
            logger.info("policy server stopped: %(connections)d connections, %(requests)d requests, "
                        "%(errors)d errors, %(refused)d refused", self.stats)

    # ----------------------------------------------------------------------------- connections
    def _authorize(self, connection: ServerConnection, request: Any) -> Any:
        """``process_request`` hook: HTTP 401 unless the Authorization header carries the token."""
        got = request.headers.get("Authorization", "").encode("utf-8", "replace")
        if hmac.compare_digest(got, self._auth):
            return None
        self.stats["refused"] += 1
        logger.debug("refused %s: %s token", connection.remote_address, "wrong" if got else "missing")
        return connection.respond(HTTPStatus.UNAUTHORIZED, "missing or wrong token\n")

    async def _handler(self, ws: ServerConnection) -> None:
        self.stats["connections"] += 1
        self.stats["open"] += 1
        cid, peer = self.stats["connections"], ws.remote_address
        counts = {"requests": 0, "errors": 0}
        predictor = None
        logger.debug("connection %d from %s opened", cid, peer)
        try:
            predictor = self._factory()
            async for data in ws:
                t0 = time.perf_counter()
                reply, failed = await self._respond(predictor, data, t0)
                counts["requests"] += 1
                counts["errors"] += failed
                self.stats["requests"] += 1
                self.stats["errors"] += failed
                try:
                    await ws.send(reply)
                except ConnectionClosed:
                    logger.debug("connection %d closed before its reply was sent; reply dropped", cid)
                    break
        except ConnectionClosed as e:
            if e.sent is not None and e.sent.code == 1009:
                self.stats["oversized"] += 1
                logger.warning("closed connection %d from %s: a message exceeded max_message_bytes=%d", cid, peer,
                               self.max_message_bytes)
            else:
                logger.debug("connection %d: %s", cid, e)
        except Exception:  # noqa: BLE001 - one connection's failure never stops the server
            logger.exception("connection %d from %s failed", cid, peer)
        finally:
            self.stats["open"] -= 1
            logger.debug("connection %d from %s closed after %d requests (%d errors)", cid, peer,
                         counts["requests"], counts["errors"])

    async def _respond(self, predictor: ChunkPredictor, data: Any, t0: float) -> tuple[bytes, bool]:
        """(encoded reply, whether it is an error) for one frame."""
        rid, kind = None, "protocol"
        try:
            msg = protocol.decode(data, self.limits)
            rid, kind = protocol.request_id(msg), "request"
            reply = await self._dispatch(predictor, msg, t0)
        except ObservationError as e:
            return protocol.error_message(str(e), "observation", rid), True
        except LfmPolicyError as e:  # ProtocolError, bad solver/prefix for this head...
            return protocol.error_message(str(e), kind, rid), True
        except Exception as e:  # noqa: BLE001 - answered, logged, server keeps serving
            logger.exception("request failed")
            return protocol.error_message(f"internal error: {type(e).__name__}: {e}", "internal", rid), True
        if rid is not None:
            reply["id"] = rid
        return protocol.encode(reply), False

    async def _dispatch(self, predictor: ChunkPredictor, msg: dict[str, Any], t0: float) -> dict[str, Any]:
        kind = msg["type"]
        if kind == "metadata":
            protocol.check_fields(msg, ())
            return dict(self._metadata)
        if kind == "reset":
            protocol.check_fields(msg, ("seed",))
            seed = msg.get("seed")
            if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
                raise ProtocolError(f"reset: 'seed' must be an int or nil, got {type(seed).__name__}")
            predictor.reset(seed)
            return {"type": "reset"}
        if kind == "infer":
            protocol.check_fields(msg, ("obs", "prefix", "prefix_weights"))
            if "obs" not in msg:
                raise ProtocolError("infer: lacks field 'obs'")
            obs = validate_window(self.info, msg["obs"])
            prefix, weights = self._prefix(msg)
            loop = asyncio.get_running_loop()
            chunk, timing = await loop.run_in_executor(self._executor, _predict, predictor, obs, prefix, weights)
            timing = {k: timing.get(k) for k in ("encode_ms", "sample_ms")}
            timing["server_ms"] = 1e3 * (time.perf_counter() - t0)
            return {"type": "chunk", "chunk": chunk, "timing": timing}
        raise ProtocolError(f"unknown message type {kind!r}; expected one of {list(protocol.REQUEST_TYPES)}")

    def _prefix(self, msg: dict[str, Any]) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Checked ``prefix`` (P, Da) and ``prefix_weights`` (P,) of an infer request (float32)."""
        prefix, weights = msg.get("prefix"), msg.get("prefix_weights")
        if prefix is None:
            if weights is not None:
                raise ProtocolError("infer: 'prefix_weights' given without 'prefix'")
            return None, None
        prefix = protocol.real_array(prefix, "prefix", 2)
        p, da = prefix.shape
        if da != self.info.action_dim or not 1 <= p <= self.info.horizon:
            raise ProtocolError(f"'prefix' must have shape (P, {self.info.action_dim}) with 1 ≤ P ≤ "
                                f"{self.info.horizon}, got {prefix.shape}")
        if weights is not None:
            weights = protocol.real_array(weights, "prefix_weights", 1)
            if weights.shape != (p,):
                raise ProtocolError(f"'prefix_weights' must have shape ({p},) like the prefix, got {weights.shape}")
            weights = weights.astype(np.float32)
        return prefix.astype(np.float32), weights


def _predict(predictor: ChunkPredictor, obs: dict[str, np.ndarray], prefix: np.ndarray | None,
             weights: np.ndarray | None) -> tuple[np.ndarray, dict[str, float]]:
    """In the worker thread: (H, Da) float32 chunk and the predictor's timing of it."""
    chunk = predictor.predict(obs, prefix=prefix, prefix_weights=weights)
    return np.ascontiguousarray(chunk, dtype=np.float32), dict(getattr(predictor, "last_timing", None) or {})
