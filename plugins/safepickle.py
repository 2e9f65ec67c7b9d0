"""Unpickling untrusted data-set files: plain data and numpy integer arrays only.

No code from the file runs (any global other than numpy's array rebuilding is refused), and no
pickle can make the unpickler allocate far more than the file's size: the opcodes are counted
and checked before anything is built.
"""

from __future__ import annotations

import io
import math
import pickle
import pickletools


class _ArrayStub:
    """Stands in for numpy's ndarray while unpickling; becomes an array only once checked."""

    def __init__(self):
        self.state = None

    def __setstate__(self, state):
        self.state = state


class _DtypeStub:
    def __init__(self, name):
        self.name = name.decode() if isinstance(name, bytes) else str(name)
        self.order = "|"

    def __setstate__(self, state):
        order = state[1] if isinstance(state, tuple) and len(state) > 1 else "|"
        self.order = order.decode() if isinstance(order, bytes) else str(order)


SAFE_DTYPES = {"u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8"}
MEMO_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}


def _reconstruct(subtype, shape, dtype):
    return _ArrayStub()


def _dtype(name, align=False, copy=False):
    stub = _DtypeStub(name)
    if stub.name not in SAFE_DTYPES:
        raise pickle.UnpicklingError(f"refused array dtype {stub.name!r}")
    return stub


def _latin1(text, encoding="latin1"):
    # Python 3's protocol-2 pickles store bytes as latin-1 text plus a call to _codecs.encode.
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError("refused _codecs.encode other than str -> latin1 bytes")
    return text.encode("latin1")


# The only globals a pickled dict of numpy arrays needs: numpy's array rebuilding, replaced by
# inert stand-ins.
SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): _ArrayStub,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _latin1,
}


class SafeUnpickler(pickle.Unpickler):
    """Loads plain data and numpy integer arrays only; any other global is refused."""

    def find_class(self, module, name):
        stub = SAFE_GLOBALS.get((module, name))
        if stub is None:
            raise pickle.UnpicklingError(f"refused to load global {module}.{name}")
        return stub


def check_opcodes(data: bytes, max_ops: int) -> None:
    """Refuses a pickle of more than max_ops operations, or one that stores to a memo slot far
    beyond those it has filled (the C unpickler allocates every slot up to the index given)."""
    for count, (op, arg, _) in enumerate(pickletools.genops(data)):
        if count >= max_ops:
            raise pickle.UnpicklingError(f"it holds more than {max_ops:,} pickle operations")
        if op.name in MEMO_PUTS and arg > count:
            raise pickle.UnpicklingError(
                f"it stores to memo slot {arg:,} after only {count:,} operations"
            )


def to_array(value):
    """A plain value, or the numpy array an _ArrayStub describes, checked against its bytes."""
    import numpy as np

    if not isinstance(value, _ArrayStub):
        return value
    state = value.state
    if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[2], _DtypeStub)):
        raise ValueError("it holds a malformed array")
    _, shape, dtype, fortran, raw = state
    if not isinstance(raw, bytes):
        raise ValueError("an array's data is not raw bytes")
    shape = tuple(shape) if isinstance(shape, tuple | list) else None
    if shape is None or len(shape) > 8 or not all(type(d) is int and d >= 0 for d in shape):
        raise ValueError("an array's shape is not a short list of sizes")
    order = dtype.order if dtype.order in "<>" else "|"
    dt = np.dtype(order + dtype.name)
    if math.prod(shape) * dt.itemsize != len(raw):
        raise ValueError(
            f"an array of shape {shape} and type {dtype.name} holds {len(raw):,} bytes; "
            f"that shape needs {math.prod(shape) * dt.itemsize:,}"
        )
    array = np.frombuffer(raw, dtype=dt)
    return array.reshape(shape, order="F" if fortran else "C")


def unpickle_dict(data: bytes, max_ops: int) -> dict:
    """A pickled dict with str keys, its numpy arrays rebuilt; raises on anything else (any
    exception at all: a caller treats each as the file being corrupt)."""
    check_opcodes(data, max_ops)
    obj = SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    if not isinstance(obj, dict):
        raise ValueError(f"it holds a {type(obj).__name__}, not a dict")
    return {(k.decode() if isinstance(k, bytes) else k): to_array(v) for k, v in obj.items()}
