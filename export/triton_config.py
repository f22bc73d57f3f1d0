"""Triton ``config.pbtxt`` files as Triton's own ``ModelConfig`` protobuf (shipped in ``tritonclient``).

Built as messages, written and read with protobuf's ``text_format``: a field Triton does not know, or a
wrong type, fails here rather than when Triton loads the repository.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Mapping
from pathlib import Path

from privsplit.errors import ExportError, require
from privsplit.proto.datatypes import Datatype
from privsplit.proto.wire import FEATURES, LABEL, PROBS
from privsplit.results import atomic_write

CONFIG = "config.pbtxt"
BACKEND = "onnxruntime"
ENSEMBLE = "ensemble"
_MODULE = "tritonclient.grpc.model_config_pb2"
_RAW_PROBS = "server_probs"  # the ensemble's tensor between the server step and the last step


def model_config_pb2():
    """Triton's model-configuration protobuf module from the installed ``tritonclient``.

    Loaded from its file, so ``tritonclient.grpc``'s ``__init__`` (which needs grpcio and registers
    Triton's copy of the inference service messages, which ours would clash with) is not imported.
    """
    if _MODULE in sys.modules:
        return sys.modules[_MODULE]
    require("tritonclient", package="tritonclient==2.73.*", extra="triton")
    found = importlib.util.find_spec("tritonclient")
    roots = list(found.submodule_search_locations or []) if found else []
    path = Path(roots[0]) / "grpc" / "model_config_pb2.py" if roots else Path("tritonclient/grpc/model_config_pb2.py")
    if not path.is_file():
        raise ExportError(f"{path} is missing: reinstall tritonclient (pip install 'privsplit[triton]')")
    spec = importlib.util.spec_from_file_location(_MODULE, path)
    if spec is None or spec.loader is None:
        raise ExportError(f"{path} cannot be imported: reinstall tritonclient (pip install 'privsplit[triton]')")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[_MODULE] = module
    return module


def data_type(datatype: Datatype) -> int:
    """The ``inference.DataType`` enum value of a protocol datatype (``FP32`` -> ``TYPE_FP32``)."""
    pb = model_config_pb2()
    return pb.DataType.Value("TYPE_STRING" if datatype is Datatype.BYTES else f"TYPE_{datatype.value}")


def _tensor(message, name: str, datatype: Datatype, dims) -> None:
    message.name = name
    message.data_type = data_type(datatype)
    message.dims.extend(int(d) for d in dims)


def _parameters(config, values: Mapping[str, str]) -> None:
    for key, value in values.items():
        config.parameters[key].string_value = str(value)


def server_config(
    name: str,
    datatype: Datatype,
    feature_shape: tuple[int, int, int],
    num_classes: int,
    max_batch_size: int,
    max_queue_delay_us: int,
    bundle_version: str,
):
    """The server layers: batching (dims without the batch), dynamic batching, ``features`` -> ``probs``."""
    pb = model_config_pb2()
    config = pb.ModelConfig(name=name, backend=BACKEND, max_batch_size=max_batch_size)
    _tensor(config.input.add(), FEATURES, datatype, feature_shape)
    _tensor(config.output.add(), PROBS, Datatype.FP32, (num_classes,))
    config.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    _parameters(config, {"privsplit_bundle_version": bundle_version})
    return config


def head_config(name: str, source: str, probs: str, num_classes: int, bundle_version: str):
    """The last step, not batching (so ``label`` can be ``[-1]``): ``source`` -> ``probs``, ``label``."""
    pb = model_config_pb2()
    config = pb.ModelConfig(name=name, backend=BACKEND, max_batch_size=0)
    _tensor(config.input.add(), source, Datatype.FP32, (-1, num_classes))
    _tensor(config.output.add(), probs, Datatype.FP32, (-1, num_classes))
    _tensor(config.output.add(), LABEL, Datatype.INT64, (-1,))
    _parameters(config, {"privsplit_bundle_version": bundle_version})
    return config


def ensemble_config(
    name: str,
    *,
    server: str,
    head: str,
    head_in: str,
    head_probs: str,
    datatype: Datatype,
    feature_shape: tuple[int, int, int],
    num_classes: int,
    parameters: Mapping[str, str],
):
    """What devices call: ``features`` ``[-1, C, h, w]`` -> ``probs`` ``[-1, K]``, ``label`` ``[-1]`` (the
    shapes of ``privsplit serve``'s model metadata; not batching itself, its server step batches)."""
    pb = model_config_pb2()
    config = pb.ModelConfig(name=name, platform=ENSEMBLE, max_batch_size=0)
    _tensor(config.input.add(), FEATURES, datatype, (-1, *feature_shape))
    _tensor(config.output.add(), PROBS, Datatype.FP32, (-1, num_classes))
    _tensor(config.output.add(), LABEL, Datatype.INT64, (-1,))
    first = config.ensemble_scheduling.step.add(model_name=server, model_version=-1)
    first.input_map[FEATURES] = FEATURES
    first.output_map[PROBS] = _RAW_PROBS
    last = config.ensemble_scheduling.step.add(model_name=head, model_version=-1)
    last.input_map[head_in] = _RAW_PROBS
    last.output_map[head_probs] = PROBS
    last.output_map[LABEL] = LABEL
    _parameters(config, parameters)
    return config


def write_config(path: Path, config) -> Path:
    from google.protobuf import text_format

    return atomic_write(path, text_format.MessageToString(config))


def read_config(path: str | Path):
    """Parse a ``config.pbtxt`` with Triton's ``ModelConfig`` (an unknown field or bad value is an error)."""
    from google.protobuf import text_format

    path = Path(path)
    try:
        return text_format.Parse(path.read_text(), model_config_pb2().ModelConfig())
    except (OSError, text_format.ParseError) as exc:
        raise ExportError(f"{path}: not a Triton model configuration ({exc})") from None
