"""The wire format between policy server and robot controllers: msgpack with numpy arrays.

An array travels as a map ``{"__ndarray__": dtype, "shape": [...], "data": raw bytes}``;
only plain numeric dtypes are accepted, so decoding never builds arbitrary objects (no
pickle anywhere, unlike formats that ship Python objects over the network).
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

MAX_MESSAGE_BYTES = 8 * 2**20  # larger frames are refused (websocket close code 1009)
ALLOWED_DTYPES = frozenset(
    ["bool", "uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64"]
)


class ProtocolError(ValueError):
    """A message that does not follow the protocol (the reply names what is wrong)."""


def _encode(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.name not in ALLOWED_DTYPES:
            raise TypeError(f"cannot send arrays of dtype {obj.dtype}")
        array = np.ascontiguousarray(obj)
        return {"__ndarray__": array.dtype.str, "shape": list(array.shape), "data": array.tobytes()}
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot encode {type(obj).__name__}")


def _decode(obj: dict) -> Any:
    if "__ndarray__" not in obj:
        return obj
    try:
        dtype = np.dtype(obj["__ndarray__"])
        shape = tuple(int(n) for n in obj["shape"])
        data = obj["data"]
    except (KeyError, TypeError, ValueError) as err:
        raise ProtocolError(f"malformed array: {err}") from err
    if dtype.name not in ALLOWED_DTYPES:
        raise ProtocolError(f"array dtype {dtype} is not allowed ({sorted(ALLOWED_DTYPES)})")
    if not isinstance(data, bytes) or len(data) != dtype.itemsize * int(np.prod(shape)):
        raise ProtocolError(f"array data does not match dtype {dtype} and shape {shape}")
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


def pack(message: dict[str, Any]) -> bytes:
    return msgpack.packb(message, default=_encode, use_bin_type=True)


def unpack(payload: bytes) -> dict[str, Any]:
    """Decode one message; anything that is not a msgpack map is a ``ProtocolError``."""
    if not isinstance(payload, bytes):
        raise ProtocolError("messages are binary msgpack frames, got a text frame")
    try:
        message = msgpack.unpackb(payload, object_hook=_decode, raw=False, strict_map_key=True)
    except ProtocolError:
        raise
    except Exception as err:  # msgpack raises several unrelated types on bad input
        raise ProtocolError(f"malformed msgpack: {err}") from err
    if not isinstance(message, dict):
        raise ProtocolError(f"a message must be a map, got {type(message).__name__}")
    return message
