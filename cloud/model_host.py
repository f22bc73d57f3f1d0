"""The model host: a verified cloud bundle's server layers and purifier on onnxruntime (no torch).

``ModelHost.open(bundle_dir)`` verifies the bundle (hashes; the signature with ``trust_key``), opens
``server.onnx`` (``features`` float32 ``[B, C, h, w]`` -> ``probs`` ``[B, K]``) and, when the bundle has
one, ``purifier.onnx`` (``probs`` -> ``purified``), and checks their I/O against the manifest.
:meth:`ModelHost.infer` runs a float32 feature batch through both and returns probabilities, labels
and the compute time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from privsplit.bundle import Bundle, BundleKind, FeatureSpec, load_bundle
from privsplit.errors import BundleError, require
from privsplit.proto.datatypes import Datatype
from privsplit.proto.messages import ModelMetadata, TensorMetadata
from privsplit.proto.wire import FEATURES, LABEL, PROBS

PLATFORM = "onnxruntime_onnx"


@dataclass(frozen=True)
class ModelSpec:
    """What the servicer needs to know about the hosted model."""

    name: str
    version: str
    classes: tuple[str, ...]
    features: FeatureSpec  # the wire spec the edge quantizes with
    accepted_encoder_hashes: frozenset[str]
    purifier: bool
    # sha256 of the signed edge manifests whose features are served (empty: a bundle exported before they were listed)
    accepted_manifest_hashes: frozenset[str] = frozenset()

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        return tuple(self.features.shape)  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def metadata(self) -> ModelMetadata:
        c, h, w = self.feature_shape
        return ModelMetadata(
            name=self.name,
            versions=(self.version,),
            platform=PLATFORM,
            inputs=(TensorMetadata(FEATURES, Datatype.INT8, (-1, c, h, w)),),
            outputs=(
                TensorMetadata(PROBS, Datatype.FP32, (-1, self.num_classes)),
                TensorMetadata(LABEL, Datatype.INT64, (-1,)),
            ),
        )


@dataclass(frozen=True, eq=False)
class HostOutput:
    probs: np.ndarray  # float32 [B, K], purified when the bundle has a purifier
    labels: np.ndarray  # int64 [B]
    compute_us: int


def _session(path: Path, threads: int):
    ort = require("onnxruntime", package="onnxruntime", extra="cloud")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise BundleError(f"{path}: onnxruntime cannot load it ({exc}); re-export the bundle") from None


def _check_io(session, path: Path, *, input_name: str, output_name: str, input_tail: tuple, output_tail: tuple) -> None:
    ins, outs = session.get_inputs(), session.get_outputs()
    if [i.name for i in ins] != [input_name] or output_name not in [o.name for o in outs]:
        raise BundleError(
            f"{path}: expected input {input_name!r} and output {output_name!r}, found inputs "
            f"{[i.name for i in ins]} and outputs {[o.name for o in outs]}; re-export the bundle"
        )
    out = next(o for o in outs if o.name == output_name)
    for arg, tail, what in ((ins[0], input_tail, "input"), (out, output_tail, "output")):
        if arg.type != "tensor(float)":
            raise BundleError(f"{path}: {what} {arg.name!r} is {arg.type}, expected float32")
        dims = tuple(d if isinstance(d, int) else -1 for d in arg.shape)
        if len(dims) != len(tail) + 1 or dims[1:] != tail:
            raise BundleError(
                f"{path}: {what} {arg.name!r} has shape {list(arg.shape)}, expected [B, {', '.join(map(str, tail))}]"
            )


class ModelHost:
    """Runs ``server.onnx`` (+ ``purifier.onnx``) of a verified cloud bundle. Thread-safe for one caller
    at a time per session (the batcher is the only caller)."""

    def __init__(self, bundle: Bundle, *, name: str, threads: int = 1) -> None:
        if bundle.kind is not BundleKind.CLOUD:
            raise BundleError(f"{bundle.root} is {bundle.kind.a}; serve the cloud bundle (OUT/cloud)")
        manifest = bundle.manifest
        self.bundle = bundle
        features = bundle.features
        classes = bundle.classes
        server = manifest["server"]
        self._server_path = bundle.file(server["file"])
        self._server = _session(self._server_path, threads)
        self._server_in, self._server_out = server["input"], server["output"]
        _check_io(
            self._server,
            self._server_path,
            input_name=self._server_in,
            output_name=self._server_out,
            input_tail=tuple(features.shape),
            output_tail=(len(classes),),
        )
        purifier = manifest.get("purifier")
        self._purifier = None
        if purifier is not None:
            path = bundle.file(purifier["file"])
            self._purifier = _session(path, threads)
            self._purifier_in, self._purifier_out = purifier["input"], purifier["output"]
            _check_io(
                self._purifier,
                path,
                input_name=self._purifier_in,
                output_name=self._purifier_out,
                input_tail=(len(classes),),
                output_tail=(len(classes),),
            )
        hashes = manifest.get("accepted_encoder_hashes") or []
        if not hashes:
            raise BundleError(
                f"{bundle.root}: accepted_encoder_hashes is empty, so no device could be served; re-export"
            )
        self.spec = ModelSpec(
            name=name,
            version=bundle.version,
            classes=classes,
            features=features,
            accepted_encoder_hashes=frozenset(str(h).lower() for h in hashes),
            accepted_manifest_hashes=frozenset(str(h).lower() for h in manifest.get("accepted_manifest_hashes") or []),
            purifier=self._purifier is not None,
        )

    @classmethod
    def open(cls, path: str | Path, *, name: str, trust_key: Path | None = None, threads: int = 1) -> ModelHost:
        return cls(load_bundle(path, trust_key=trust_key, kind=BundleKind.CLOUD), name=name, threads=threads)

    def infer(self, features: np.ndarray) -> HostOutput:
        """float32 ``[B, C, h, w]`` -> purified probabilities ``[B, K]``, labels ``[B]`` and compute time."""
        started = time.perf_counter()
        probs = self._server.run([self._server_out], {self._server_in: features})[0]
        if self._purifier is not None:
            probs = self._purifier.run([self._purifier_out], {self._purifier_in: probs})[0]
        probs = np.asarray(probs, dtype=np.float32)
        labels = probs.argmax(axis=1).astype(np.int64)
        return HostOutput(probs=probs, labels=labels, compute_us=int((time.perf_counter() - started) * 1e6))
