"""Domain dataclasses of the protocol's messages, each with ``to_proto()`` / ``from_proto()``.

Protobuf stays here, at the transport edge: the cloud handlers and the edge client work on these.
Decoding validates what the wire can get wrong (datatype, shape, byte length, typed contents, parameter
values) and raises :class:`~privsplit.proto.status.ProtocolError` (``INVALID_ARGUMENT``) naming the
field, e.g. ``raw_input_contents[0]: 2047 bytes, expected 2048 for INT8 [1, 32, 8, 8]``. Tensors are
encoded as raw little-endian bytes (``raw_input_contents`` / ``raw_output_contents``), as Triton does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from privsplit.proto.datatypes import Datatype
from privsplit.proto.inference import open_inference_grpc_pb2 as pb
from privsplit.proto.status import invalid

ParamValue = bool | int | float | str
_INT64 = (-(2**63), 2**63 - 1)
_UINT64_MAX = 2**64 - 1
_MAX_ELEMENTS = 2**40  # beyond any message gRPC carries; keeps shape arithmetic sane


# ---- parameters ----------------------------------------------------------------------------------
def params_to_proto(params: Mapping[str, ParamValue], target) -> None:
    """Fill a protobuf ``map<string, InferParameter>`` from a dict of bool / int / float / str."""
    for key, value in params.items():
        slot = target[key]
        if isinstance(value, (bool, np.bool_)):
            slot.bool_param = bool(value)
        elif isinstance(value, (int, np.integer)):
            value = int(value)
            if _INT64[0] <= value <= _INT64[1]:
                slot.int64_param = value
            elif 0 <= value <= _UINT64_MAX:
                slot.uint64_param = value
            else:
                raise ValueError(f"parameter {key!r}: {value} does not fit int64 or uint64")
        elif isinstance(value, (float, np.floating)):
            slot.double_param = float(value)
        elif isinstance(value, str):
            slot.string_param = value
        else:
            raise TypeError(f"parameter {key!r}: {type(value).__name__} is not bool, int, float or str")


def params_from_proto(source, where: str) -> dict[str, ParamValue]:
    out: dict[str, ParamValue] = {}
    for key in source:  # (not .items(): its generator is a Python layer over the C map)
        param = source[key]
        which = param.WhichOneof("parameter_choice")
        if which is None:
            raise invalid(f"{where}[{key!r}]", "parameter has no value (set one of bool/int64/uint64/double/string)")
        out[key] = getattr(param, which)
    return out


# ---- tensors ------------------------------------------------------------------------------------
def _element_count(shape: tuple[int, ...], where: str) -> int:
    count = spanned = 1  # spanned: the product of the non-zero dimensions (a zero must not hide a huge shape)
    for i, dim in enumerate(shape):
        if dim < 0:
            raise invalid(f"{where}.shape", f"dimension {i} is {dim}; dimensions must be >= 0 (got {list(shape)})")
        count *= dim
        spanned *= max(dim, 1)
        if count > _MAX_ELEMENTS or spanned > _MAX_ELEMENTS:
            raise invalid(f"{where}.shape", f"{list(shape)} has more elements than any message can carry")
    return count


def _from_typed(datatype: Datatype, contents, shape, count: int, where: str) -> np.ndarray:
    name = datatype.contents_field
    if name is None or datatype.numpy is None:
        raise invalid(f"{where}.contents", f"{datatype.value} travels only as raw contents")
    values = getattr(contents, name)
    if len(values) != count:
        raise invalid(
            f"{where}.contents.{name}", f"{len(values)} values, expected {count} for {datatype.value} {list(shape)}"
        )
    dt = datatype.numpy
    if np.issubdtype(dt, np.integer) and dt.itemsize < 4:
        wide = np.asarray(values, dtype=np.int64)
        info = np.iinfo(dt)
        if wide.size and (wide.min() < info.min or wide.max() > info.max):
            raise invalid(
                f"{where}.contents.{name}", f"values outside the {datatype.value} range [{info.min}, {info.max}]"
            )
        return wide.astype(dt).reshape(shape)
    return np.asarray(values, dtype=dt).reshape(shape)


def _from_raw(datatype: Datatype, raw: bytes, shape, count: int, where: str, raw_field: str) -> np.ndarray:
    dt = datatype.numpy
    if dt is None:
        raise invalid(f"{where}.datatype", f"{datatype.value} tensors are not supported here")
    expected = count * dt.itemsize
    if len(raw) != expected:
        raise invalid(raw_field, f"{len(raw)} bytes, expected {expected} for {datatype.value} {list(shape)}")
    return np.frombuffer(raw, dtype=dt).reshape(shape)


@dataclass(frozen=True, eq=False)
class Tensor:
    """A named tensor: ``data`` carries shape and dtype; ``parameters`` the tensor's parameter map."""

    name: str
    data: np.ndarray
    parameters: Mapping[str, ParamValue] = field(default_factory=dict)

    @property
    def datatype(self) -> Datatype:
        return Datatype.of(self.data.dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape  # numpy's shape is a tuple of Python ints

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Tensor):
            return NotImplemented
        return (
            self.name == other.name
            and self.data.dtype == other.data.dtype
            and self.data.shape == other.data.shape
            and np.array_equal(self.data, other.data, equal_nan=self.data.dtype.kind == "f")
            and dict(self.parameters) == dict(other.parameters)
        )

    def _fill(self, msg) -> bytes:
        datatype = self.datatype
        msg.name = self.name
        msg.datatype = datatype.value
        msg.shape.extend(self.data.shape)
        if self.parameters:
            params_to_proto(self.parameters, msg.parameters)
        return np.ascontiguousarray(self.data, dtype=datatype.numpy).tobytes()

    @classmethod
    def _decode(cls, msg, raw: bytes | None, where: str, raw_field: str) -> Tensor:
        datatype = Datatype.parse(msg.datatype)
        if datatype is None:
            raise invalid(
                f"{where}.datatype",
                f"unknown datatype {msg.datatype!r}; expected one of {', '.join(d.value for d in Datatype)}",
            )
        shape = tuple(msg.shape)
        count = _element_count(shape, where)
        if raw is not None:
            data = _from_raw(datatype, raw, shape, count, where, raw_field)
        elif msg.HasField("contents"):
            data = _from_typed(datatype, msg.contents, shape, count, where)
        elif count == 0 and datatype.numpy is not None:
            data = np.zeros(shape, dtype=datatype.numpy)
        else:
            raise invalid(
                f"{where}.contents", f"no data: set {raw_field} or typed contents for {datatype.value} {list(shape)}"
            )
        return cls(name=msg.name, data=data, parameters=params_from_proto(msg.parameters, f"{where}.parameters"))


def _decode_tensors(tensors, raws, prefix: str, raw_name: str) -> tuple[Tensor, ...]:
    if raws and len(raws) != len(tensors):
        raise invalid(raw_name, f"{len(raws)} entries for {len(tensors)} {prefix}: give one per tensor or none")
    out, seen = [], set()
    for i, msg in enumerate(tensors):
        where = f"{prefix}[{i}]"
        if raws and msg.HasField("contents"):
            raise invalid(f"{where}.contents", f"typed contents and {raw_name} together; use one of them")
        if msg.name in seen:
            raise invalid(f"{where}.name", f"duplicate tensor name {msg.name!r}")
        seen.add(msg.name)
        out.append(Tensor._decode(msg, raws[i] if raws else None, where, f"{raw_name}[{i}]"))
    return tuple(out)


# ---- inference ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RequestedOutput:
    name: str
    parameters: Mapping[str, ParamValue] = field(default_factory=dict)


@dataclass(frozen=True)
class InferRequest:
    model_name: str
    inputs: tuple[Tensor, ...]
    model_version: str = ""
    id: str = ""
    parameters: Mapping[str, ParamValue] = field(default_factory=dict)
    outputs: tuple[RequestedOutput, ...] = ()

    def to_proto(self) -> pb.ModelInferRequest:
        msg = pb.ModelInferRequest(model_name=self.model_name, model_version=self.model_version, id=self.id)
        params_to_proto(self.parameters, msg.parameters)
        for tensor in self.inputs:
            msg.raw_input_contents.append(tensor._fill(msg.inputs.add()))
        for out in self.outputs:
            params_to_proto(out.parameters, msg.outputs.add(name=out.name).parameters)
        return msg

    @classmethod
    def from_proto(cls, msg: pb.ModelInferRequest) -> InferRequest:
        return cls(
            model_name=msg.model_name,
            model_version=msg.model_version,
            id=msg.id,
            parameters=params_from_proto(msg.parameters, "parameters"),
            inputs=_decode_tensors(msg.inputs, msg.raw_input_contents, "inputs", "raw_input_contents"),
            outputs=tuple(
                RequestedOutput(o.name, params_from_proto(o.parameters, f"outputs[{i}].parameters"))
                for i, o in enumerate(msg.outputs)
            ),
        )


@dataclass(frozen=True)
class InferResponse:
    model_name: str
    outputs: tuple[Tensor, ...]
    model_version: str = ""
    id: str = ""
    parameters: Mapping[str, ParamValue] = field(default_factory=dict)

    def output(self, name: str) -> Tensor:
        for tensor in self.outputs:
            if tensor.name == name:
                return tensor
        raise KeyError(f"the response has no output {name!r}; it has {[t.name for t in self.outputs]}")

    def to_proto(self) -> pb.ModelInferResponse:
        msg = pb.ModelInferResponse(model_name=self.model_name, model_version=self.model_version, id=self.id)
        params_to_proto(self.parameters, msg.parameters)
        for tensor in self.outputs:
            msg.raw_output_contents.append(tensor._fill(msg.outputs.add()))
        return msg

    @classmethod
    def from_proto(cls, msg: pb.ModelInferResponse) -> InferResponse:
        return cls(
            model_name=msg.model_name,
            model_version=msg.model_version,
            id=msg.id,
            parameters=params_from_proto(msg.parameters, "parameters"),
            outputs=_decode_tensors(msg.outputs, msg.raw_output_contents, "outputs", "raw_output_contents"),
        )


class ResponseEncoder:
    """Serialises :class:`InferResponse` replies fast, for a server that sends many of the same layout.

    What replies of one layout share (model name and version; each output's name, datatype and shape) is
    serialised once and cached; per reply only the id, the parameters and ``raw_output_contents`` are.
    Protobuf parses concatenated messages as one merged message (repeated fields appended in order), so
    ``header + tail`` parses to exactly :meth:`InferResponse.to_proto`. Outputs with tensor parameters
    are serialised whole.
    """

    def __init__(self, *, max_layouts: int = 1024) -> None:
        self._headers: dict[tuple, bytes] = {}
        self._max_layouts = max_layouts

    def encode(self, response: InferResponse) -> bytes:
        outputs = response.outputs
        if any(t.parameters for t in outputs):
            return response.to_proto().SerializeToString()
        key = (response.model_name, response.model_version, *((t.name, t.data.dtype, t.data.shape) for t in outputs))
        header = self._headers.get(key)
        if header is None:
            msg = pb.ModelInferResponse(model_name=response.model_name, model_version=response.model_version)
            for t in outputs:
                msg.outputs.add(name=t.name, datatype=t.datatype.value, shape=t.data.shape)
            header = msg.SerializeToString()
            if len(self._headers) >= self._max_layouts:  # bounded: a client may send any batch size
                self._headers.clear()
            self._headers[key] = header
        tail = pb.ModelInferResponse(id=response.id)
        if response.parameters:
            params_to_proto(response.parameters, tail.parameters)
        tail.raw_output_contents.extend(
            np.ascontiguousarray(t.data, dtype=Datatype.of(t.data.dtype).numpy).tobytes() for t in outputs
        )
        return header + tail.SerializeToString()


@dataclass(frozen=True)
class StreamInferResponse:
    """One reply on a ModelStreamInfer stream: a response, or the error of the request it answers."""

    response: InferResponse | None = None
    error_message: str = ""

    def to_proto(self) -> pb.ModelStreamInferResponse:
        msg = pb.ModelStreamInferResponse(error_message=self.error_message)
        if self.response is not None:
            msg.infer_response.CopyFrom(self.response.to_proto())
        return msg

    @classmethod
    def from_proto(cls, msg: pb.ModelStreamInferResponse) -> StreamInferResponse:
        response = InferResponse.from_proto(msg.infer_response) if msg.HasField("infer_response") else None
        return cls(response=response, error_message=msg.error_message)


# ---- metadata -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelRef:
    """The (name, version) of a ModelReady or ModelMetadata request; empty version: the server's choice."""

    name: str
    version: str = ""

    def to_proto(self, message_type=pb.ModelMetadataRequest):
        return message_type(name=self.name, version=self.version)

    @classmethod
    def from_proto(cls, msg) -> ModelRef:
        return cls(name=msg.name, version=msg.version)


@dataclass(frozen=True)
class TensorMetadata:
    name: str
    datatype: Datatype
    shape: tuple[int, ...]  # -1: variable

    def to_proto(self) -> pb.ModelMetadataResponse.TensorMetadata:
        return pb.ModelMetadataResponse.TensorMetadata(
            name=self.name, datatype=self.datatype.value, shape=list(self.shape)
        )

    @classmethod
    def from_proto(cls, msg, where: str = "tensor") -> TensorMetadata:
        datatype = Datatype.parse(msg.datatype)
        if datatype is None:
            raise invalid(f"{where}.datatype", f"unknown datatype {msg.datatype!r}")
        return cls(name=msg.name, datatype=datatype, shape=tuple(int(d) for d in msg.shape))


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorMetadata, ...]
    outputs: tuple[TensorMetadata, ...]

    def to_proto(self) -> pb.ModelMetadataResponse:
        return pb.ModelMetadataResponse(
            name=self.name,
            versions=list(self.versions),
            platform=self.platform,
            inputs=[t.to_proto() for t in self.inputs],
            outputs=[t.to_proto() for t in self.outputs],
        )

    @classmethod
    def from_proto(cls, msg: pb.ModelMetadataResponse) -> ModelMetadata:
        return cls(
            name=msg.name,
            versions=tuple(msg.versions),
            platform=msg.platform,
            inputs=tuple(TensorMetadata.from_proto(t, f"inputs[{i}]") for i, t in enumerate(msg.inputs)),
            outputs=tuple(TensorMetadata.from_proto(t, f"outputs[{i}]") for i, t in enumerate(msg.outputs)),
        )


@dataclass(frozen=True)
class ServerMetadata:
    name: str
    version: str
    extensions: tuple[str, ...] = ()

    def to_proto(self) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=self.name, version=self.version, extensions=list(self.extensions))

    @classmethod
    def from_proto(cls, msg: pb.ServerMetadataResponse) -> ServerMetadata:
        return cls(name=msg.name, version=msg.version, extensions=tuple(msg.extensions))
