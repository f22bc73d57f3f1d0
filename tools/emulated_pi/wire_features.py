"""Wire features of every encoder in an edge bundle, without channel noise, for a bit-for-bit comparison.

Runs the same on the host (x86) and in the emulated Pi (aarch64), with only ``privsplit[edge]`` installed::

    python wire_features.py BUNDLE PIXELS.npy OUT.npz

PIXELS.npy: uint8 (N, size, size, C). OUT.npz: ``F`` -> int8 (N, C, h, w) per encoder format ``F``, and
``runtime/F`` -> the interpreter that ran it.
"""

from __future__ import annotations

import sys

import numpy as np

from privsplit.edge.pipeline import EdgePipeline


def main(bundle: str, pixels_path: str, out: str) -> int:
    pixels = np.load(pixels_path)
    from privsplit.bundle import BundleKind, load_bundle

    verified = load_bundle(bundle, kind=BundleKind.EDGE)
    arrays: dict[str, np.ndarray] = {}
    for name in sorted(verified.manifest["encoders"]):
        pipe = EdgePipeline.open(verified, encoder=name, noise=False)
        arrays[name] = pipe.encode_pixels(pixels).data
        arrays[f"runtime/{name}"] = np.array(pipe.runtime.name.value)
        pipe.close()
    np.savez(out, **arrays)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
