"""A Triton model repository from a cloud bundle: the same service as ``privsplit serve``, no privsplit code.

``write_triton_repository(cloud, out)`` writes::

    out/NAME/config.pbtxt + 1/                  ensemble: what devices call (NAME as in ``privsplit serve``)
    out/NAME_server/config.pbtxt + 1/model.onnx   int8 features -> DequantizeLinear -> server layers -> probs
    out/NAME_purifier/...  (NAME_label/... when the bundle has no purifier)   probs -> probs, label (ArgMax)

The ensemble has the input and outputs of our service's model metadata: ``features`` INT8 ``[-1, C, h, w]``
in, ``probs`` FP32 ``[-1, K]`` and ``label`` INT64 ``[-1]`` out. The server model batches (dynamic batching,
so requests of many devices share a run); the last step does not, since a batching Triton model cannot
return a ``[B]`` tensor (its dims would read ``[B, 1]``). The wire scale and zero point of the bundle are
constants of the server graph. Every ``config.pbtxt`` is Triton's own ``ModelConfig`` protobuf (from the
installed ``tritonclient``) written with ``text_format``.

Triton does not check ``encoder_hash`` or ``manifest_hash`` (the accepted hashes are listed in the ensemble's
parameters ``privsplit_accepted_encoder_hashes`` / ``privsplit_accepted_manifest_hashes``) and
ignores the ``scale`` / ``zero_point`` parameters a device sends: the graph uses the bundle's.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from privsplit.bundle import Bundle, BundleKind
from privsplit.errors import ConfigError, ExportError
from privsplit.export.triton_config import CONFIG, ensemble_config, head_config, server_config, write_config
from privsplit.proto.datatypes import Datatype
from privsplit.proto.wire import DEFAULT_MODEL_NAME, FEATURES, LABEL, PROBS
from privsplit.results import atomic_write

VERSION = "1"  # Triton's versions are integers; the bundle's own version is in each model's parameters
ONNX_FILE = "model.onnx"
# The defaults of `privsplit serve` (cloud.config.BatchConfig): rows one request may carry, queue delay
MAX_BATCH_SIZE = 256
MAX_QUEUE_DELAY_US = 1000
_DEQUANTIZED = "features_dequantized"


@dataclass(frozen=True)
class TritonRepository:
    """What :func:`write_triton_repository` wrote: the ensemble devices call and its two steps."""

    root: Path
    ensemble: str
    server: str
    head: str  # the purifier (or, without one, the label step)
    purifier: bool

    def config_path(self, model: str) -> Path:
        return self.root / model / CONFIG

    def onnx_path(self, model: str) -> Path:
        return self.root / model / VERSION / ONNX_FILE


def check_model_name(name: str) -> str:
    if not name or "/" in name or name.startswith(".") or name.strip() != name:
        raise ConfigError(
            f"--triton-model-name must be a non-empty folder name without '/' or spaces around it, got {name!r}"
        )
    return name


def _rename_input(graph, old: str, new: str) -> None:
    """Point every use of value ``old`` (also in subgraphs, which may read outer names) at ``new``."""
    import onnx

    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _rename_input(attr.g, old, new)
            for sub in attr.graphs:
                _rename_input(sub, old, new)
    for out in graph.output:
        if out.name == old:
            raise ExportError(f"the graph returns its input {old!r} unchanged; re-export the bundle")


def server_graph(cloud: Bundle):
    """The bundle's ``server.onnx`` with an int8 (uint8) ``features`` input dequantized in the graph."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    server = cloud.manifest["server"]
    spec = cloud.features
    model = onnx.load(str(cloud.file(server["file"])))
    graph = model.graph
    inputs = [i for i in graph.input if i.name not in {t.name for t in graph.initializer}]
    if [i.name for i in inputs] != [server["input"]]:
        raise ExportError(f"server.onnx inputs are {[i.name for i in inputs]}, expected [{server['input']!r}]")
    if spec.dtype not in ("int8", "uint8"):
        raise ExportError(f"wire features are {spec.dtype}; a Triton repository needs int8 or uint8 features")
    wire = np.dtype(spec.dtype)
    original = inputs[0]
    _rename_input(graph, original.name, _DEQUANTIZED)
    quantized = onnx.ValueInfoProto()
    quantized.CopyFrom(original)
    quantized.name = FEATURES
    quantized.type.tensor_type.elem_type = helper.np_dtype_to_tensor_dtype(wire)
    graph.input.remove(original)
    graph.input.insert(0, quantized)
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(spec.scale, dtype=np.float32), "wire_scale"),
            numpy_helper.from_array(np.array(spec.zero_point, dtype=wire), "wire_zero_point"),
        ]
    )
    dequantize = helper.make_node(
        "DequantizeLinear", [FEATURES, "wire_scale", "wire_zero_point"], [_DEQUANTIZED], name="wire_dequantize"
    )
    graph.node.insert(0, dequantize)
    _output(graph, server["output"])
    return model


def _output(graph, name: str):
    found = [o for o in graph.output if o.name == name]
    if not found:
        raise ExportError(f"the graph has no output {name!r} (outputs {[o.name for o in graph.output]})")
    return found[0]


def head_graph(cloud: Bundle, *, opset: int, ir_version: int) -> tuple[object, str, str]:
    """The last step: the purifier (or an identity) plus ``label`` = ArgMax; returns (model, input, probs)."""
    import onnx
    from onnx import TensorProto, helper

    purifier = cloud.manifest.get("purifier")
    if purifier is not None:
        model = onnx.load(str(cloud.file(purifier["file"])))
        source, probs_out = purifier["input"], purifier["output"]
    else:
        k = len(cloud.classes)
        source, probs_out = PROBS, "probs_out"
        graph = helper.make_graph(
            [helper.make_node("Identity", [source], [probs_out])],
            "privsplit_label",
            [helper.make_tensor_value_info(source, TensorProto.FLOAT, ["batch", k])],
            [helper.make_tensor_value_info(probs_out, TensorProto.FLOAT, ["batch", k])],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)
    graph = model.graph
    probs = _output(graph, probs_out)
    batch = probs.type.tensor_type.shape.dim[0]
    graph.node.append(helper.make_node("ArgMax", [probs_out], [LABEL], axis=1, keepdims=0, name="label_argmax"))
    label = helper.make_tensor_value_info(LABEL, TensorProto.INT64, [batch.dim_param or batch.dim_value or "batch"])
    graph.output.append(label)
    return model, source, probs_out


def write_triton_repository(
    cloud: Bundle,
    out: str | Path,
    *,
    model_name: str = DEFAULT_MODEL_NAME,
    max_batch_size: int = MAX_BATCH_SIZE,
    max_queue_delay_us: int = MAX_QUEUE_DELAY_US,
) -> TritonRepository:
    """Write the Triton repository of a (verified) cloud bundle to ``out``; ``out`` must not exist."""
    if cloud.kind is not BundleKind.CLOUD:
        raise ExportError(f"{cloud.root} is {cloud.kind.a}; a Triton repository is made from the cloud bundle")
    check_model_name(model_name)
    if max_batch_size < 1 or max_queue_delay_us < 0:
        raise ConfigError(
            f"max_batch_size must be >= 1 and max_queue_delay_us >= 0, got {max_batch_size}, {max_queue_delay_us}"
        )
    out = Path(out)
    if out.exists():
        raise ConfigError(f"{out} already exists: remove it or choose another folder for the Triton repository")
    purifier = cloud.manifest.get("purifier") is not None
    repo = TritonRepository(
        root=out,
        ensemble=model_name,
        server=f"{model_name}_server",
        head=f"{model_name}_purifier" if purifier else f"{model_name}_label",
        purifier=purifier,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))  # complete or absent, never half
    try:
        os.chmod(work, 0o755)  # mkdtemp's 0700 would hide the repository from a Triton container's user
        _write(replace(repo, root=work), cloud, max_batch_size=max_batch_size, max_queue_delay_us=max_queue_delay_us)
        work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return repo


def _write(repo: TritonRepository, cloud: Bundle, *, max_batch_size: int, max_queue_delay_us: int) -> None:
    import onnx

    out = repo.root
    server = server_graph(cloud)
    opset = next(o.version for o in server.opset_import if o.domain in ("", "ai.onnx"))
    head, head_in, head_probs = head_graph(cloud, opset=opset, ir_version=server.ir_version)
    for name, model in ((repo.server, server), (repo.head, head)):
        try:
            onnx.checker.check_model(model, full_check=True)
        except Exception as exc:  # onnx raises its own checker and shape-inference errors
            raise ExportError(f"the Triton model {name!r} is not a valid ONNX graph: {exc}") from None
        path = repo.onnx_path(name)
        path.parent.mkdir(parents=True)
        atomic_write(path, model.SerializeToString())
    (out / repo.ensemble / VERSION).mkdir(parents=True)  # Triton wants a version folder, empty for an ensemble
    shape, k = cloud.features.shape, len(cloud.classes)
    datatype = Datatype.of(cloud.features.dtype)
    version = cloud.version
    configs = {
        repo.server: server_config(repo.server, datatype, shape, k, max_batch_size, max_queue_delay_us, version),
        repo.head: head_config(repo.head, head_in, head_probs, k, version),
        repo.ensemble: ensemble_config(
            repo.ensemble,
            server=repo.server,
            head=repo.head,
            head_in=head_in,
            head_probs=head_probs,
            datatype=datatype,
            feature_shape=shape,
            num_classes=k,
            parameters={
                "privsplit_bundle_version": version,
                "privsplit_accepted_encoder_hashes": ",".join(cloud.manifest["accepted_encoder_hashes"]),
                # the signed edge manifests whose features this repository serves (Triton cannot check them:
                # a gateway in front of it, or `privsplit serve`, does)
                "privsplit_accepted_manifest_hashes": ",".join(cloud.manifest.get("accepted_manifest_hashes", [])),
                "privsplit_wire_scale": repr(float(cloud.features.scale)),
                "privsplit_wire_zero_point": str(cloud.features.zero_point),
            },
        ),
    }
    for name, config in configs.items():
        write_config(repo.config_path(name), config)
