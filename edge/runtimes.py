"""Interpreter backends behind one interface: ``litert`` (ai-edge-litert), ``tflite-runtime`` (legacy,
numpy<2 only) and ``onnxruntime``, chosen by name or automatically from what is installed.

Each backend opens one encoder artefact and runs it on arrays already in the artefact's input dtype
(``run(x) -> raw output``); quantization conventions live in :mod:`privsplit.edge.preprocess` and
:mod:`privsplit.edge.pipeline`. The tensor specs the interpreter reports are checked against the
manifest's, so a manifest that lies about its artefact is refused before anything runs.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np

from privsplit.bundle import TensorSpec
from privsplit.errors import BundleError, ConfigError, MissingDependencyError
from privsplit.quiet import drop_native_stderr


class RuntimeName(str, Enum):
    LITERT = "litert"
    TFLITE_RUNTIME = "tflite-runtime"
    ONNXRUNTIME = "onnxruntime"

    @property
    def artefact(self) -> str:
        """The artefact family it runs (the manifest's ``encoders.<fmt>.runtime``): tflite or onnx."""
        return "onnx" if self is RuntimeName.ONNXRUNTIME else "tflite"

    @property
    def module(self) -> str:
        return _MODULES[self]

    @property
    def package(self) -> str:
        return _PACKAGES[self]


_MODULES = {
    RuntimeName.LITERT: "ai_edge_litert.interpreter",
    RuntimeName.TFLITE_RUNTIME: "tflite_runtime.interpreter",
    RuntimeName.ONNXRUNTIME: "onnxruntime",
}
_PACKAGES = {
    RuntimeName.LITERT: "ai-edge-litert==2.3.*",
    RuntimeName.TFLITE_RUNTIME: "tflite-runtime==2.14.* 'numpy<2'",
    RuntimeName.ONNXRUNTIME: "onnxruntime",
}
# Automatic choice per artefact family, best first (tflite-runtime is the legacy fallback).
PREFERENCE: dict[str, tuple[RuntimeName, ...]] = {
    "tflite": (RuntimeName.LITERT, RuntimeName.TFLITE_RUNTIME),
    "onnx": (RuntimeName.ONNXRUNTIME,),
}


def parse_runtime(name: str | RuntimeName | None) -> RuntimeName | None:
    if name is None or isinstance(name, RuntimeName):
        return name
    try:
        return RuntimeName(name)
    except ValueError:
        raise ConfigError(f"unknown runtime {name!r}; choose from {', '.join(r.value for r in RuntimeName)}") from None


def _numpy_major() -> int:
    return int(np.__version__.split(".")[0])


def import_backend(name: RuntimeName):
    """Import a backend's module or raise :class:`MissingDependencyError` naming the pip package."""
    installed = importlib.util.find_spec(name.module.split(".")[0]) is not None
    if installed and name is RuntimeName.TFLITE_RUNTIME and _numpy_major() >= 2:
        raise MissingDependencyError(
            f"tflite-runtime needs numpy<2 but numpy {np.__version__} is installed (its interpreter fails to "
            "construct): use --runtime litert (pip install 'ai-edge-litert==2.3.*'), "
            "or pip install 'numpy<2' 'tflite-runtime==2.14.*'"
        )
    try:
        return importlib.import_module(name.module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"runtime {name.value} is not installed ({exc}): pip install {name.package} "
            "(or pip install 'privsplit[edge]')"
        ) from None


def available(name: RuntimeName) -> bool:
    try:
        import_backend(name)
    except MissingDependencyError:
        return False
    return True


def available_runtimes() -> tuple[RuntimeName, ...]:
    return tuple(r for r in RuntimeName if available(r))


def choose_runtime(artefact: str, requested: RuntimeName | str | None = None) -> RuntimeName:
    """The backend for an artefact family (``tflite``/``onnx``): ``requested`` if it runs that family,
    else the first installed one in :data:`PREFERENCE`."""
    requested = parse_runtime(requested)
    if artefact not in PREFERENCE:
        raise BundleError(f"unknown artefact runtime {artefact!r}; this privsplit runs {sorted(PREFERENCE)}")
    if requested is not None:
        if requested.artefact != artefact:
            raise ConfigError(f"runtime {requested.value} runs {requested.artefact} artefacts, not {artefact}")
        import_backend(requested)
        return requested
    errors = []
    for candidate in PREFERENCE[artefact]:
        try:
            import_backend(candidate)
            return candidate
        except MissingDependencyError as exc:
            errors.append(str(exc))
    raise MissingDependencyError(f"no runtime for {artefact} artefacts is installed: " + " | ".join(errors))


@dataclass(frozen=True)
class IOSpec:
    input: TensorSpec
    output: TensorSpec


class Runtime:
    """One opened encoder artefact. ``run(x)`` takes a batch in the input dtype, returns the raw output."""

    name: RuntimeName
    path: Path
    threads: int
    io: IOSpec
    max_batch: int | None  # None: any batch in one call

    def run(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass


def tflite_spec(detail: dict) -> TensorSpec:
    """A TFLite interpreter's tensor detail as a :class:`TensorSpec` (quantization only for integer tensors)."""
    scale, zero_point = detail["quantization"]
    dtype = np.dtype(detail["dtype"]).name
    quantized = dtype in ("int8", "uint8", "int16") and scale != 0.0
    return TensorSpec(
        dtype=dtype,
        shape=tuple(int(v) for v in detail["shape"]),
        scale=float(scale) if quantized else None,
        zero_point=int(zero_point) if quantized else None,
    )


class TfliteRuntime(Runtime):
    """ai-edge-litert or tflite-runtime (same Interpreter API); batch 1, looped over the rows."""

    def __init__(self, name: RuntimeName, path: Path, *, threads: int) -> None:
        module = import_backend(name)
        self.name, self.path, self.threads = name, Path(path), threads
        try:
            with drop_native_stderr():  # LiteRT's "Created TensorFlow Lite XNNPACK delegate" INFO line
                interp = module.Interpreter(model_path=str(path), num_threads=threads)
                interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise BundleError(f"{path.name}: {name.value} cannot load it ({exc})") from None
        inputs, outputs = interp.get_input_details(), interp.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise BundleError(
                f"{path.name}: expected one input and one output, it has {len(inputs)} and {len(outputs)}"
            )
        self._interp = interp
        self._in, self._out = inputs[0]["index"], outputs[0]["index"]
        self.io = IOSpec(tflite_spec(inputs[0]), tflite_spec(outputs[0]))
        self.max_batch = int(inputs[0]["shape"][0])
        self._invoke = interp.invoke
        self._set = interp.set_tensor
        self._get = interp.get_tensor

    def run(self, x: np.ndarray) -> np.ndarray:
        n = self.max_batch
        assert n is not None  # the interpreter's fixed batch, set in __init__
        if len(x) == n:
            self._set(self._in, x)
            self._invoke()
            return self._get(self._out).copy()
        if len(x) % n:
            raise ConfigError(f"{self.path.name} takes batches of {n} rows, got {len(x)}")
        rows = []
        for s in range(0, len(x), n):
            self._set(self._in, x[s : s + n])
            self._invoke()
            rows.append(self._get(self._out).copy())
        return np.concatenate(rows)

    def close(self) -> None:
        self._interp = None


_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(float16)": "float16",
}


def ort_spec(arg) -> TensorSpec:
    """An onnxruntime input/output description as a :class:`TensorSpec` (symbolic dimensions -> -1)."""
    shape = tuple(int(v) if isinstance(v, int) else -1 for v in arg.shape)
    return TensorSpec(dtype=_ORT_DTYPES.get(arg.type, arg.type), shape=shape)


class OnnxRuntime(Runtime):
    """onnxruntime on the CPU provider; ONNX encoders take any batch in one call."""

    def __init__(self, path: Path, *, threads: int) -> None:
        ort = import_backend(RuntimeName.ONNXRUNTIME)
        self.name, self.path, self.threads = RuntimeName.ONNXRUNTIME, Path(path), threads
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
            raise BundleError(f"{path.name}: onnxruntime cannot load it ({type(exc).__name__}: {exc})") from None
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise BundleError(
                f"{path.name}: expected one input and one output, it has {len(inputs)} and {len(outputs)}"
            )

        self._session = session
        self._in_name, self._out_name = inputs[0].name, outputs[0].name
        self.io = IOSpec(ort_spec(inputs[0]), ort_spec(outputs[0]))
        self.max_batch = None if self.io.input.shape[0] == -1 else self.io.input.shape[0]

    def run(self, x: np.ndarray) -> np.ndarray:
        return self._session.run([self._out_name], {self._in_name: x})[0]

    def close(self) -> None:
        self._session = None


def check_io(runtime: Runtime, *, manifest_input: TensorSpec, manifest_output: TensorSpec) -> None:
    """Raise :class:`BundleError` unless the artefact's I/O matches the manifest (dtype, shape, quantization)."""
    for role, got, want in (
        ("input", runtime.io.input, manifest_input),
        ("output", runtime.io.output, manifest_output),
    ):
        if got.dtype != want.dtype or tuple(got.shape) != tuple(want.shape):
            raise BundleError(
                f"{runtime.path.name}: {runtime.name.value} reports {role} {got.dtype} {list(got.shape)}, the manifest "
                f"says {want.dtype} {list(want.shape)}: "
                "the manifest does not describe this artefact (re-export the bundle)"
            )
        if got.quantized != want.quantized or (
            got.scale is not None
            and want.scale is not None
            and (abs(got.scale - want.scale) > 1e-6 * abs(want.scale) or got.zero_point != want.zero_point)
        ):
            raise BundleError(
                f"{runtime.path.name}: {role} quantization is scale {got.scale} "
                f"zero point {got.zero_point}, the manifest "
                f"says {want.scale} / {want.zero_point} (re-export the bundle)"
            )


def open_runtime(path: Path, *, artefact: str, runtime: RuntimeName | str | None = None, threads: int = 1) -> Runtime:
    """Open ``path`` (an encoder of family ``artefact``) with ``runtime`` or the best installed backend."""
    if threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    name = choose_runtime(artefact, runtime)
    if name is RuntimeName.ONNXRUNTIME:
        return OnnxRuntime(path, threads=threads)
    return TfliteRuntime(name, path, threads=threads)
