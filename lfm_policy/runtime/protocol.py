"""Wire format of the policy server: msgpack messages with numpy arrays, decoded strictly.

Every message is one binary WebSocket frame holding a msgpack map with a ``"type"`` field. Arrays travel
as the tagged map openpi's ``msgpack_numpy`` uses, so its robot-side clients can talk to this server::

    {b"__ndarray__": True, b"data": <raw bytes, C order>, b"dtype": "<f4", b"shape": [H, Da]}

Requests (an ``"id"`` of int or str, if given, is echoed in the reply):

* ``{"type": "metadata"}`` → ``{"type": "metadata", **PolicyInfo.to_dict(), "version", "protocol"}``;
* ``{"type": "reset", "seed": int | None}`` → ``{"type": "reset"}``;
* ``{"type": "infer", "obs": {key: (To, ...)}, "prefix": (P, Da), "prefix_weights": (P,)}`` (prefix
  optional) → ``{"type": "chunk", "chunk": (H, Da) float32, "timing": {"encode_ms", "sample_ms",
  "server_ms"}}``;
* anything wrong → ``{"type": "error", "error": "<one line naming the key/field>", "kind": KIND}`` with
  KIND ``protocol`` (undecodable), ``request`` (bad fields), ``observation`` (window does not match the
  policy) or ``internal``.

Decoding never trusts the sender: only numeric dtypes of :data:`ALLOWED_DTYPES` (little-endian), the
byte length must equal prod(shape) × itemsize, and nesting depth and total array elements are bounded
(:class:`Limits`). Any failure raises :class:`ProtocolError` with a one-line message.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np

from lfm_policy.errors import LfmPolicyError

#: Bumped when a message changes incompatibly (sent in the metadata reply).
PROTOCOL_VERSION = 1
REQUEST_TYPES = ("metadata", "reset", "infer")
ERROR_KINDS = ("protocol", "request", "observation", "internal")

_NAMES = ("bool", "uint8", "int8", "int16", "int32", "int64", "uint16", "uint32", "uint64",
          "float16", "float32", "float64")
#: The dtypes an array may have on the wire, by name and by little-endian ``dtype.str`` ("<f4", "|u1").
ALLOWED_DTYPES: dict[str, np.dtype] = {
    **{n: np.dtype(n).newbyteorder("<") for n in _NAMES},
    **{np.dtype(n).newbyteorder("<").str: np.dtype(n).newbyteorder("<") for n in _NAMES},
}
_ARRAY_TAG, _SCALAR_TAG = "__ndarray__", "__npgeneric__"
_MAX_NDIM = 32


class ProtocolError(LfmPolicyError, ValueError):
    """A message cannot be encoded or decoded (the message names the field)."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """Bounds on what :func:`decode` accepts (the frame size itself is bounded by the WebSocket layer).

    Attributes:
        max_depth: Deepest nesting of maps/lists (the message map is depth 1, an array's tag map counts).
        max_elements: Total array elements over the whole message.

    """

    max_depth: int = 8
    max_elements: int = 2**26


DEFAULT_LIMITS = Limits()


# ------------------------------------------------------------------------------------------- encoding
def _wire_dtype(dtype: np.dtype, where: str) -> np.dtype:
    """The little-endian allowed dtype for ``dtype`` (raises ProtocolError for object, str, complex...)."""
    le = dtype.newbyteorder("<") if dtype.byteorder in "<>=" else dtype
    if dtype.kind not in "biuf" or le.str not in ALLOWED_DTYPES:
        raise ProtocolError(f"{where}: dtype {dtype} cannot be sent; allowed: {', '.join(_NAMES)}")
    return ALLOWED_DTYPES[le.str]


def _default(obj: Any) -> Any:
    """Hook of msgpack.packb: numpy arrays → tagged map, numpy scalars → Python scalars."""
    if isinstance(obj, np.ndarray):
        dtype = _wire_dtype(obj.dtype, "array")
        arr = np.ascontiguousarray(obj, dtype=dtype)
        return {_ARRAY_TAG.encode(): True, b"data": arr.tobytes(), b"dtype": dtype.str, b"shape": list(arr.shape)}
    if isinstance(obj, np.generic):
        _wire_dtype(obj.dtype, "scalar")
        return obj.item()
    raise ProtocolError(f"cannot encode a {type(obj).__name__}")


def encode(message: Mapping[str, Any]) -> bytes:
    """The msgpack bytes of a message (a map; numpy arrays of allowed dtypes anywhere inside).

    Raises:
        ProtocolError: An object msgpack cannot hold (object/str arrays, arbitrary Python objects).

    """
    try:
        return msgpack.packb(message, default=_default, use_bin_type=True)
    except ProtocolError:
        raise
    except (TypeError, ValueError, OverflowError) as e:
        raise ProtocolError(f"cannot encode message: {e}") from None


def error_message(error: str, kind: str = "request", request_id: Any = None) -> bytes:
    """Encoded ``{"type": "error", ...}`` reply (``error`` reduced to one line)."""
    reply: dict[str, Any] = {"type": "error", "error": one_line(error), "kind": kind}
    if request_id is not None:
        reply["id"] = request_id
    return encode(reply)


def one_line(text: str, limit: int = 500) -> str:
    """``text`` with line breaks collapsed and cut at ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ------------------------------------------------------------------------------------------- decoding
def decode(data: bytes, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """A message map from msgpack bytes, with tagged arrays turned into (writable) numpy arrays.

    Raises:
        ProtocolError: Not msgpack, truncated, not a map with a str ``"type"``, too deep, too many
            elements, or an array with a bad dtype/shape/byte length (the message names the field).

    """
    if isinstance(data, str):
        raise ProtocolError("text frames are not accepted; send the msgpack message as a binary frame")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"expected a binary msgpack frame, got {type(data).__name__}")
    try:
        # unpackb bounds container/str/bin lengths by the frame's length and its own stack depth.
        obj = msgpack.unpackb(bytes(data), raw=False, strict_map_key=True, use_list=True)
    except msgpack.ExtraData:
        raise ProtocolError("message has trailing bytes after the msgpack object") from None
    except (ValueError, TypeError, msgpack.UnpackException) as e:  # OutOfData, FormatError, StackError...
        detail = one_line(e, 120) or {"StackError": "nested too deep", "FormatError": "bad type byte"}.get(
            type(e).__name__, "")
        raise ProtocolError(f"message is not valid msgpack ({type(e).__name__}: {detail})") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"message must be a msgpack map, got {type(obj).__name__}")
    if not isinstance(obj.get("type"), str):
        raise ProtocolError("message lacks a str 'type' field")
    budget = [limits.max_elements]
    return _walk(obj, "message", 1, limits, budget)


def _walk(obj: Any, where: str, depth: int, limits: Limits, budget: list[int]) -> Any:
    if isinstance(obj, (dict, list)) and depth > limits.max_depth:
        raise ProtocolError(f"{where}: nested deeper than {limits.max_depth} levels")
    if isinstance(obj, list):
        return [_walk(v, f"{where}[{i}]", depth + 1, limits, budget) for i, v in enumerate(obj)]
    if not isinstance(obj, dict):
        if obj is not None and not isinstance(obj, (bool, int, float, str, bytes)):  # ext types, timestamps
            raise ProtocolError(f"{where}: msgpack {type(obj).__name__} values are not supported")
        return obj
    if _ARRAY_TAG in obj or _ARRAY_TAG.encode() in obj:
        return _array(obj, where, budget)
    if _SCALAR_TAG in obj or _SCALAR_TAG.encode() in obj:
        return _scalar(obj, where)
    out = {}
    for k, v in obj.items():
        name = k.decode("utf-8", "replace") if isinstance(k, bytes) else k
        out[name] = _walk(v, f"{where}.{name}" if where != "message" else str(name), depth + 1, limits, budget)
    return out


def _field(obj: dict, name: str, where: str) -> Any:
    for key in (name.encode(), name):
        if key in obj:
            return obj[key]
    raise ProtocolError(f"{where}: array lacks field {name!r}")


def _dtype(obj: dict, where: str) -> np.dtype:
    name = _field(obj, "dtype", where)
    if isinstance(name, bytes):
        name = name.decode("ascii", "replace")
    if not isinstance(name, str) or name not in ALLOWED_DTYPES:
        raise ProtocolError(f"{where}: dtype {name!r} is not allowed; allowed: {', '.join(_NAMES)} (little-endian)")
    return ALLOWED_DTYPES[name]


def _array(obj: dict, where: str, budget: list[int]) -> np.ndarray:
    dtype = _dtype(obj, where)
    shape, data = _field(obj, "shape", where), _field(obj, "data", where)
    if not isinstance(shape, list) or len(shape) > _MAX_NDIM or not all(
            type(s) is int and s >= 0 for s in shape):
        raise ProtocolError(f"{where}: shape must be a list of at most {_MAX_NDIM} ints ≥ 0, got {shape!r}")
    if not isinstance(data, bytes):
        raise ProtocolError(f"{where}: array data must be bytes, got {type(data).__name__}")
    n = math.prod(shape)
    if len(data) != n * dtype.itemsize:
        raise ProtocolError(f"{where}: {len(data)} data bytes for shape {tuple(shape)} of {dtype.name} "
                            f"(expected {n * dtype.itemsize})")
    budget[0] -= n
    if budget[0] < 0:
        raise ProtocolError(f"{where}: the message's arrays exceed the element limit")
    arr = np.frombuffer(data, dtype=dtype).reshape(shape)
    if dtype.kind == "b":  # bytes other than 0/1 would make odd bools
        return np.frombuffer(data, dtype=np.uint8).reshape(shape) != 0
    return arr.astype(dtype.newbyteorder("="), copy=True)


def _scalar(obj: dict, where: str) -> Any:
    dtype = _dtype(obj, where)
    value = _field(obj, "data", where)
    if type(value) not in (bool, int, float):
        raise ProtocolError(f"{where}: scalar data must be a number, got {type(value).__name__}")
    try:
        return dtype.type(value)
    except (OverflowError, ValueError) as e:
        raise ProtocolError(f"{where}: {value!r} does not fit {dtype.name} ({e})") from None


# ------------------------------------------------------------------------------------- request fields
def check_fields(msg: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    """Raise ProtocolError naming the fields of ``msg`` not in ``allowed`` (``type``/``id`` always allowed)."""
    unknown = sorted(str(k) for k in msg if k not in (*allowed, "type", "id"))
    if unknown:
        raise ProtocolError(f"{msg['type']}: unknown field(s) {unknown}; expected {list(allowed)}")


def real_array(x: Any, name: str, ndim: int) -> np.ndarray:
    """``x`` as a finite real array of ``ndim`` dimensions (raises ProtocolError naming ``name``)."""
    if not isinstance(x, np.ndarray):
        raise ProtocolError(f"{name!r} must be an array, got {type(x).__name__}")
    if x.ndim != ndim or x.dtype.kind not in "fiu":
        raise ProtocolError(f"{name!r} must be a {ndim}-d real array, got shape {x.shape} of {x.dtype}")
    if not np.isfinite(x).all():
        raise ProtocolError(f"{name!r} contains NaN or inf")
    return x


def request_id(msg: Any) -> Any:
    """The ``id`` to echo: an int or a str (≤ 200 chars) of the request, else None."""
    rid = msg.get("id") if isinstance(msg, dict) else None
    if isinstance(rid, bool) or not isinstance(rid, (int, str)) or (isinstance(rid, str) and len(rid) > 200):
        return None
    return rid
