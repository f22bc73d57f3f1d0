"""The device pipeline: image files, numpy frames or a folder -> int8 wire features with scale/zero point.

    pixels (decode, centre-crop, resize)  ->  encoder input (normalise, quantize)  ->  runtime.run
    ->  dequantize, NHWC -> (C, h, w), + N(0, noise_sigma)  ->  wire int8 (features.scale / zero_point)

The bundle is verified (hashes; the signature too when a trusted key is given) before anything is
loaded. The channel noise is drawn here, on the device, because the converters carry no random ops:
``seed=None`` (the default) draws it from OS entropy, a fixed seed makes it reproducible for tests.
Every input gets an :class:`Item`: pixels, or the error that stopped it (nothing is dropped).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from privsplit.bundle import Bundle, BundleKind, FeatureSpec, TensorSpec, load_bundle
from privsplit.edge.preprocess import Preprocessor, list_images
from privsplit.edge.runtimes import (
    PREFERENCE,
    Runtime,
    RuntimeName,
    check_io,
    choose_runtime,
    open_runtime,
    parse_runtime,
)
from privsplit.edge.trust import find_device
from privsplit.errors import BundleError, ConfigError, DataError, MissingDependencyError
from privsplit.noise_keying import NoiseKeying, device_noise_key, frame_keyed_normal

# Which shipped encoder to pick when the default one cannot run here (best for a device first).
ENCODER_PREFERENCE = ("tflite-int8", "tflite-dynamic", "tflite-fp16", "tflite-fp32", "onnx-int8", "onnx-fp32")


@dataclass(frozen=True, eq=False)
class Item:
    """One input: ``pixels`` ``uint8 (size, size, C)``, or the ``error`` that stopped it, or (not yet
    decoded, see :meth:`EdgePipeline.expand`) the ``path`` to decode."""

    source: str
    pixels: np.ndarray | None = None
    error: str | None = None
    path: Path | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def pending(self) -> bool:
        return self.error is None and self.pixels is None


@dataclass(frozen=True, eq=False)
class WireFeatures:
    """Features as they leave the device: int8 ``(N, C, h, w)`` with the wire scale and zero point."""

    data: np.ndarray
    scale: float
    zero_point: int
    encoder_hash: str
    timing_ms: dict[str, float] = field(default_factory=dict)  # preprocess / encode / quantize, whole batch
    manifest_hash: str | None = None  # sha256 of the signed manifest.json: the bundle's identity on the wire

    def dequantize(self) -> np.ndarray:
        return ((self.data.astype(np.float32) - np.float32(self.zero_point)) * np.float32(self.scale)).astype(
            np.float32
        )


def _entry_family(name: str, entry: dict) -> str:
    family = entry.get("runtime")
    if family is None:
        family = "onnx" if str(entry["file"]).endswith(".onnx") else "tflite"
    return str(family)


def select_encoder(
    bundle: Bundle, *, encoder: str | None, runtime: RuntimeName | str | None
) -> tuple[str, RuntimeName]:
    """(encoder format, runtime): the requested ones, else the default encoder if a backend for it is
    installed, else the best shipped encoder that one of the installed backends runs."""
    encoders = bundle.manifest["encoders"]
    runtime = parse_runtime(runtime)
    if encoder is not None:
        if encoder not in encoders:
            raise ConfigError(f"{bundle.root} has no encoder {encoder!r}; it ships {', '.join(sorted(encoders))}")
        return encoder, choose_runtime(_entry_family(encoder, encoders[encoder]), runtime)
    default = bundle.manifest["default_encoder"]
    ranked = [default] + [e for e in ENCODER_PREFERENCE if e in encoders and e != default]
    ranked += [e for e in encoders if e not in ranked]
    if runtime is not None:
        for name in ranked:
            if _entry_family(name, encoders[name]) == runtime.artefact:
                return name, choose_runtime(runtime.artefact, runtime)
        raise ConfigError(
            f"{bundle.root} ships no {runtime.artefact} encoder for --runtime {runtime.value}; "
            f"it has {', '.join(sorted(encoders))}"
        )
    errors = []
    for name in ranked:
        family = _entry_family(name, encoders[name])
        if family not in PREFERENCE:
            continue
        try:
            return name, choose_runtime(family)
        except MissingDependencyError as exc:
            errors.append(str(exc))
    raise MissingDependencyError(f"no installed runtime can run any encoder of {bundle.root}: " + " | ".join(errors))


class EdgePipeline:
    """A verified edge bundle with its encoder opened. Build with :meth:`open`."""

    def __init__(
        self,
        bundle: Bundle,
        *,
        encoder: str,
        runtime: Runtime,
        seed: int | None = None,
        noise: bool = True,
        noise_key: bytes | None = None,
        noise_keying: NoiseKeying | None = None,
    ) -> None:
        entry = bundle.manifest["encoders"][encoder]
        path, in_spec, out_spec = bundle.encoder(encoder)
        check_io(runtime, manifest_input=in_spec, manifest_output=out_spec)
        self.bundle = bundle
        self.encoder = encoder
        self.encoder_hash = str(entry["sha256"])
        self.manifest_hash = bundle.manifest_sha256 or None
        self.runtime = runtime
        self.input: TensorSpec = in_spec
        self.output: TensorSpec = out_spec
        self.wire: FeatureSpec = bundle.features
        self.preprocessor = Preprocessor.from_manifest(bundle.manifest, in_spec)
        self.noise = noise
        self.rng = np.random.default_rng(seed)
        # ``noise_keying`` overrides the manifest's for measurements only (e.g. reading the seeded holdout draw)
        self.noise_keying = NoiseKeying(noise_keying or self.wire.noise_keying)
        self._noise_key = noise_key
        if self.noise_keying is NoiseKeying.FRAME and noise and self.wire.noise_sigma > 0 and noise_key is None:
            self._noise_key = device_noise_key(find_device(bundle.root))
        c, h, w = self.wire.shape
        if tuple(out_spec.shape[1:]) != (h, w, c):
            raise BundleError(
                f"encoder {encoder} outputs {list(out_spec.shape)}, the wire features are [C, h, w] = {[c, h, w]}"
            )
        self._passthrough = self._wire_equals_output()

    @classmethod
    def open(
        cls,
        bundle: str | Path | Bundle,
        *,
        trust_key=None,
        encoder: str | None = None,
        runtime: RuntimeName | str | None = None,
        threads: int = 1,
        seed: int | None = None,
        noise: bool = True,
        noise_key: bytes | None = None,
        noise_keying: NoiseKeying | None = None,
    ) -> EdgePipeline:
        """Verify the bundle (signature with ``trust_key``), pick encoder and backend, open the artefact."""
        if not isinstance(bundle, Bundle):
            bundle = load_bundle(bundle, trust_key=trust_key, kind=BundleKind.EDGE)
        elif bundle.kind is not BundleKind.EDGE:
            raise BundleError(f"{bundle.root} is {bundle.kind.a}; the device needs the edge bundle")
        name, backend = select_encoder(bundle, encoder=encoder, runtime=runtime)
        path, _, _ = bundle.encoder(name)
        rt = open_runtime(
            path, artefact=_entry_family(name, bundle.manifest["encoders"][name]), runtime=backend, threads=threads
        )
        return cls(
            bundle, encoder=name, runtime=rt, seed=seed, noise=noise, noise_key=noise_key, noise_keying=noise_keying
        )

    # ---- inputs -----------------------------------------------------------------------------------
    def expand(self, inputs: Iterable[str | Path] | np.ndarray, *, bgr: bool = False) -> list[Item]:
        """Files and folders (each folder's images, sorted) or a ``uint8 (N, H, W, C)`` array -> one
        :class:`Item` per input, files not yet decoded (:meth:`load` decodes; folders of many images
        need not sit in memory at once). A folder without images becomes an item with its error."""
        if isinstance(inputs, np.ndarray):
            try:
                pixels = self.preprocessor.frames(inputs, bgr=bgr)
            except DataError as exc:
                return [Item(source="frames", error=str(exc))]
            return [Item(source=f"frame[{i}]", pixels=p) for i, p in enumerate(pixels)]
        out: list[Item] = []
        for entry in inputs:
            path = Path(entry)
            if path.is_dir():
                files = list_images(path)
                if not files:
                    out.append(Item(source=str(path), error=f"{path} holds no image files"))
                out.extend(Item(source=str(f), path=f) for f in files)
            else:
                out.append(Item(source=str(path), path=path))
        return out

    def load(self, item: Item) -> Item:
        """Decode a pending item; an unreadable file becomes an item with its error."""
        if not item.pending:
            return item
        if item.path is None:  # expand() gives every pending item a path
            return Item(source=item.source, error=f"{item.source}: no image file to decode")
        try:
            return Item(source=item.source, pixels=self.preprocessor.decode(item.path), path=item.path)
        except DataError as exc:
            return Item(source=item.source, error=str(exc), path=item.path)

    def items(self, inputs: Iterable[str | Path] | np.ndarray, *, bgr: bool = False) -> list[Item]:
        """:meth:`expand` and :meth:`load` every input."""
        return [self.load(it) for it in self.expand(inputs, bgr=bgr)]

    # ---- stages -------------------------------------------------------------------------------------
    def input_tensor(self, pixels: np.ndarray) -> np.ndarray:
        return self.preprocessor.to_input(pixels)

    def run_encoder(self, x: np.ndarray) -> np.ndarray:
        return self.runtime.run(x)

    def _wire_equals_output(self) -> bool:
        """True when the int8 encoder output already is the wire tensor (same scale and zero point), so
        that without noise requantizing changes no value: |q - zp| <= 255 and the scales agree to 1e-6."""
        o, w = self.output, self.wire
        return (
            o.dtype == w.dtype == "int8"
            and o.scale is not None
            and o.zero_point == w.zero_point
            and abs(o.scale / w.scale - 1.0) * 256 < 1e-3
        )

    def to_wire(self, raw: np.ndarray, pixels: np.ndarray | None = None) -> np.ndarray:
        """Raw encoder output (NHWC) -> wire int8 ``(N, C, h, w)``, with the channel noise added.

        Frame-keyed noise needs the frames' ``pixels`` (the uint8 input the encoder read)."""
        sigma = self.wire.noise_sigma if self.noise else 0.0
        if sigma <= 0 and self._passthrough:
            return np.ascontiguousarray(raw.transpose(0, 3, 1, 2))
        z = self.output.dequantize(raw).transpose(0, 3, 1, 2)
        if sigma > 0:
            z = z + np.float32(sigma) * self.draw_noise(z.shape, pixels)
        return np.ascontiguousarray(self.wire.quantize(z))

    def draw_noise(self, shape: tuple[int, ...], pixels: np.ndarray | None) -> np.ndarray:
        """Standard-normal channel noise for one batch: fresh, or keyed on the device secret and each frame."""
        if self.noise_keying is NoiseKeying.FRESH:
            return self.rng.standard_normal(shape, dtype=np.float32)
        if pixels is None or len(pixels) != shape[0] or self._noise_key is None:
            raise BundleError(f"{self.bundle.root} keys its noise on each frame: pass the frames' pixels to to_wire")
        return frame_keyed_normal(self._noise_key, pixels, tuple(shape[1:]))

    def encode_pixels(self, pixels: np.ndarray) -> WireFeatures:
        """``uint8 (N, size, size, C)`` -> wire features, timing each stage."""
        t0 = time.perf_counter()
        x = self.input_tensor(pixels)
        t1 = time.perf_counter()
        raw = self.run_encoder(x)
        t2 = time.perf_counter()
        q = self.to_wire(raw, pixels)
        t3 = time.perf_counter()
        timing = {"preprocess": (t1 - t0) * 1e3, "encode": (t2 - t1) * 1e3, "quantize": (t3 - t2) * 1e3}
        return WireFeatures(
            data=q,
            scale=self.wire.scale,
            zero_point=self.wire.zero_point,
            encoder_hash=self.encoder_hash,
            timing_ms=timing,
            manifest_hash=self.manifest_hash,
        )

    def encode(self, inputs: Sequence[str | Path] | np.ndarray) -> tuple[list[Item], WireFeatures]:
        """Inputs -> (items, wire features of the readable ones, in item order)."""
        items = self.items(inputs)
        good = [it.pixels for it in items if it.ok and it.pixels is not None]
        c, h, w = self.wire.shape
        if not good:
            return items, WireFeatures(
                np.zeros((0, c, h, w), np.int8),
                self.wire.scale,
                self.wire.zero_point,
                self.encoder_hash,
                manifest_hash=self.manifest_hash,
            )
        return items, self.encode_pixels(np.stack(good))

    def describe(self) -> dict:
        return {
            "bundle": str(self.bundle.root),
            "version": self.bundle.version,
            "encoder": self.encoder,
            "runtime": self.runtime.name.value,
            "threads": self.runtime.threads,
            "encoder_hash": self.encoder_hash,
            "manifest_hash": self.manifest_hash,
            "signed": self.bundle.signed,
            "verified_key_id": self.bundle.verified_key_id,
            "noise_sigma": self.wire.noise_sigma if self.noise else 0.0,
            "noise_keying": self.noise_keying.value,
        }

    def close(self) -> None:
        self.runtime.close()
