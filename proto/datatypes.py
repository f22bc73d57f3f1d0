"""Tensor datatypes of the protocol and their numpy dtypes, raw byte layout and typed-contents fields."""

from __future__ import annotations

from enum import Enum

import numpy as np


class Datatype(str, Enum):
    """The protocol's datatype strings. BYTES and BF16 travel but have no numpy dtype here."""

    BOOL = "BOOL"
    UINT8 = "UINT8"
    UINT16 = "UINT16"
    UINT32 = "UINT32"
    UINT64 = "UINT64"
    INT8 = "INT8"
    INT16 = "INT16"
    INT32 = "INT32"
    INT64 = "INT64"
    FP16 = "FP16"
    FP32 = "FP32"
    FP64 = "FP64"
    BYTES = "BYTES"
    BF16 = "BF16"

    @property
    def numpy(self) -> np.dtype | None:
        """Little-endian numpy dtype (None for BYTES and BF16)."""
        return _WIRE_DTYPE.get(self)

    @property
    def itemsize(self) -> int | None:
        dt = _WIRE_DTYPE.get(self)
        return None if dt is None else dt.itemsize

    @classmethod
    def parse(cls, text: str) -> Datatype | None:
        """The datatype named ``text``, or None (a fast, non-raising lookup for decoding)."""
        return _BY_VALUE.get(text)

    @property
    def contents_field(self) -> str | None:
        """The ``InferTensorContents`` field typed contents of this datatype use (None: raw only)."""
        return _CONTENTS.get(self)

    @classmethod
    def of(cls, dtype) -> Datatype:
        """The datatype of a numpy dtype (``ValueError`` when the protocol has none for it)."""
        dt = np.dtype(dtype)
        found = _BY_NUMPY.get(dt) or _BY_NUMPY.get(dt.newbyteorder("="))
        if found is None:
            raise ValueError(f"numpy dtype {dt} has no protocol datatype")
        return found


_NUMPY = {
    Datatype.BOOL: "bool",
    Datatype.UINT8: "uint8",
    Datatype.UINT16: "uint16",
    Datatype.UINT32: "uint32",
    Datatype.UINT64: "uint64",
    Datatype.INT8: "int8",
    Datatype.INT16: "int16",
    Datatype.INT32: "int32",
    Datatype.INT64: "int64",
    Datatype.FP16: "float16",
    Datatype.FP32: "float32",
    Datatype.FP64: "float64",
}

_WIRE_DTYPE = {member: np.dtype(name).newbyteorder("<") for member, name in _NUMPY.items()}
_BY_NUMPY = {np.dtype(name): member for member, name in _NUMPY.items()}
_BY_VALUE = {member.value: member for member in Datatype}

_CONTENTS = {
    Datatype.BOOL: "bool_contents",
    Datatype.UINT8: "uint_contents",
    Datatype.UINT16: "uint_contents",
    Datatype.UINT32: "uint_contents",
    Datatype.UINT64: "uint64_contents",
    Datatype.INT8: "int_contents",
    Datatype.INT16: "int_contents",
    Datatype.INT32: "int_contents",
    Datatype.INT64: "int64_contents",
    Datatype.FP32: "fp32_contents",
    Datatype.FP64: "fp64_contents",
    Datatype.BYTES: "bytes_contents",
}
