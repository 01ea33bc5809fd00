"""Client of the policy server: a remote policy behind the :class:`ChunkPredictor` interface.

:class:`PolicyClient` is what a robot process runs: it connects (synchronously, no asyncio needed on the
robot), fetches the policy's :class:`PolicyInfo` from the server's metadata message, and then
``reset``/``predict`` behave like a :class:`~lfm_policy.runtime.interface.LocalPredictor` on the same
checkpoint — the same chunks for the same episode seed — so the control loop runs unchanged::

    with PolicyClient("ws://gpu-box:8765", token=secret) as policy:
        policy.reset(seed=0)
        chunk = policy.predict({"agent_pos": obs_window})   # (H, Da) float32
        policy.last_timing   # encode_ms, sample_ms, server_ms, round_trip_ms

Windows are checked here first (:func:`validate_window`, ``validate=True``), so a bad observation raises
:class:`ObservationError` before anything is sent; the server checks again. Error replies raise
:class:`PolicyServerError` (or :class:`ObservationError`) with the server's one-line message.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.sync.client import connect

from lfm_policy.errors import LfmPolicyError
from lfm_policy.runtime import protocol
from lfm_policy.runtime.interface import ObservationError, PolicyInfo, validate_window

logger = logging.getLogger(__name__)

DEFAULT_URL = "ws://127.0.0.1:8765"
_CLIENT_LIMITS = protocol.Limits(max_depth=16, max_elements=2**28)
# websockets ≥ 15 would route ws:// through an HTTP(S)_PROXY from the environment (a policy link never
# should); ≥ 17.1 wants legacy=True for a connection that outlives a ``with`` block.
_CONNECT_KW = {k: v for k, v in (("proxy", None), ("legacy", True)) if k in inspect.signature(connect).parameters}


class PolicyServerError(LfmPolicyError):
    """The server answered with an error (``kind``: protocol, request, observation, internal) or went away."""

    def __init__(self, message: str, kind: str = "request"):
        super().__init__(message)
        self.kind = kind


class PolicyClient:
    """A policy served by :class:`~lfm_policy.runtime.server.PolicyServer` (``lfm-policy serve``).

    Args:
        url: ``ws://host:port`` of the server.
        token: Shared secret, sent as ``Authorization: Bearer <token>`` (None: none).
        timeout_s: Longest wait for the connection and for each reply.
        max_message_bytes: Largest reply accepted.
        validate: Check windows against ``info`` before sending (False sends them as given).

    Attributes:
        info: :class:`PolicyInfo` of the served policy (from the metadata message).
        last_timing: Of the last ``predict``: ``encode_ms`` and ``sample_ms`` (server-side policy time),
            ``server_ms`` (frame received → reply ready on the server) and ``round_trip_ms`` (call → return).
        server_version: lfm-policy version of the server.

    Raises:
        LfmPolicyError: The server cannot be reached or refuses the connection (HTTP 401: missing or
            wrong token).

    """

    def __init__(self, url: str = DEFAULT_URL, *, token: str | None = None, timeout_s: float = 10.0,
                 max_message_bytes: int = 32 * 2**20, validate: bool = True):
        self.url, self.timeout_s, self.validate = url, float(timeout_s), validate
        headers = {"Authorization": f"Bearer {token}"} if token is not None else None
        try:
            self._ws = connect(url, additional_headers=headers, max_size=max_message_bytes, compression=None,
                               open_timeout=self.timeout_s, **_CONNECT_KW)
        except InvalidStatus as e:
            status = e.response.status_code
            why = " (missing or wrong token)" if status == 401 else ""
            raise LfmPolicyError(f"policy server at {url} refused the connection: HTTP {status}{why}") from None
        except (OSError, TimeoutError, InvalidURI, InvalidHandshake) as e:
            raise LfmPolicyError(f"cannot connect to policy server at {url}: {e}") from None
        self._lock = threading.Lock()
        self._next_id = 0
        self.last_timing: dict[str, float] = {}
        try:
            meta = self.metadata()
            self.info = PolicyInfo.from_dict(meta)
        except BaseException:
            self.close()
            raise
        self.server_version = meta.get("version")
        logger.debug("connected to %s: head=%s NFE=%s (server %s)", url, self.info.head, self.info.nfe,
                     self.server_version)

    # -------------------------------------------------------------------------- ChunkPredictor
    def metadata(self) -> dict[str, Any]:
        """The server's metadata: :meth:`PolicyInfo.to_dict` fields plus ``version`` and ``protocol``."""
        reply = self._request({"type": "metadata"}, "metadata")
        return {k: v for k, v in reply.items() if k not in ("type", "id")}

    def reset(self, seed: int | None = None) -> None:
        """Start an episode on the server (``seed``: its chunks' noise, as ``lfm-policy eval`` draws it)."""
        self._request({"type": "reset", "seed": None if seed is None else int(seed)}, "reset")

    def predict(self, window: Mapping[str, Any], *, prefix: np.ndarray | None = None,
                prefix_weights: np.ndarray | None = None) -> np.ndarray:
        """(H, Da) float32 unnormalized chunk for one window ``{key: (To, ...)}``.

        Args:
            window: Observation window; images (To, H, W, C) uint8, low-dim keys (To, D).
            prefix: (P, Da) actions the chunk's steps To−1 … should follow (flow heads).
            prefix_weights: (P,) weights of the prefix steps.

        Raises:
            ObservationError: The window does not match ``info`` (checked here or by the server).
            PolicyServerError: Any other error reply, a lost connection or no reply within ``timeout_s``.

        """
        t0 = time.perf_counter()
        if self.validate:
            window = validate_window(self.info, window)
        elif not isinstance(window, Mapping):
            raise ObservationError(f"observation must be a mapping of key to array, got {type(window).__name__}")
        msg: dict[str, Any] = {"type": "infer", "obs": dict(window)}
        if prefix is not None:
            msg["prefix"] = np.asarray(prefix, np.float32)
        if prefix_weights is not None:
            msg["prefix_weights"] = np.asarray(prefix_weights, np.float32)
        reply = self._request(msg, "chunk")
        chunk = reply.get("chunk")
        want = (self.info.horizon, self.info.action_dim)
        if not isinstance(chunk, np.ndarray) or chunk.shape != want:
            got = chunk.shape if isinstance(chunk, np.ndarray) else type(chunk).__name__
            raise PolicyServerError(f"reply 'chunk': expected a {want} array, got {got}", "protocol")
        timing = reply.get("timing") if isinstance(reply.get("timing"), dict) else {}
        self.last_timing = {k: float(timing[k]) for k in ("encode_ms", "sample_ms", "server_ms")
                            if isinstance(timing.get(k), (int, float))}
        self.last_timing["round_trip_ms"] = 1e3 * (time.perf_counter() - t0)
        return chunk.astype(np.float32, copy=False)

    # ------------------------------------------------------------------------------- transport
    def _request(self, msg: dict[str, Any], expect: str) -> dict[str, Any]:
        """Send ``msg`` with a fresh id and return the reply of that id (raising on error replies)."""
        with self._lock:
            self._next_id += 1
            rid = msg["id"] = self._next_id
            data = protocol.encode(msg)
            deadline = time.monotonic() + self.timeout_s
            try:
                self._ws.send(data)
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError
                    reply = protocol.decode(self._ws.recv(timeout=remaining), _CLIENT_LIMITS)
                    if reply.get("id") is None or reply.get("id") == rid:
                        break
                    logger.debug("dropping a late reply (id %r) while waiting for id %d", reply.get("id"), rid)
            except TimeoutError:
                raise PolicyServerError(f"no {expect!r} reply from {self.url} within {self.timeout_s} s",
                                        "internal") from None
            except ConnectionClosed as e:
                raise PolicyServerError(f"connection to {self.url} closed: {e}", "protocol") from None
            except protocol.ProtocolError as e:
                raise PolicyServerError(f"undecodable reply from {self.url}: {e}", "protocol") from None
        if reply["type"] == "error":
            text, kind = str(reply.get("error", "")), str(reply.get("kind", "request"))
            if kind == "observation":
                raise ObservationError(text)
            raise PolicyServerError(f"policy server: {text}", kind)
        if reply["type"] != expect:
            raise PolicyServerError(f"expected a {expect!r} reply, got {reply['type']!r}", "protocol")
        return reply

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self._ws.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
