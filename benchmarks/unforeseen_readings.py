"""Linkage and every (or the named) attribute on a shipped encoder's wire features, from one frame or the mean of K.

Each reading is ``KEYING:K[:JITTER]``: the edge bundle exported with that noise keying (``BUNDLES/KEYING/edge``),
the mean of K copies of each image (each perturbed by JITTER grey levels of sensor noise). The wire features of the
whole dataset are encoded once per reading through the device pipeline (stand-in device key) and shared by the
linkage probe and the attribute sweep, so a reading costs one encode instead of one per probe. Results go to
``OUT/TAG/probe_linkage.json`` and ``probe_attributes.json`` (the probes' own schemas); a finished reading is kept.

    python benchmarks/unforeseen_readings.py runs/celeba bundles --out benchmarks/results/unforeseen \\
        frame:1 fresh:16 frame:16 frame:16:2 --attributes Male,Bald,Wearing_Hat,Eyeglasses

Prints each summary, then one JSON line per reading and a table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np


def _digest(image: np.ndarray) -> bytes:
    return hashlib.blake2b(image.tobytes(), digest_size=16).digest()


def reading(run: Path, bundles: Path, out: Path, text: str, *, attributes: str, seed: int) -> dict:
    from privsplit.edge.pipeline import EdgePipeline
    from privsplit.noise_keying import NoiseKeying, stand_in_key
    from privsplit.probes.attribute_sweep import AttributeSweepResult, probe_attribute_sweep, sweep_spec
    from privsplit.probes.frames import Frames, averaged_encoder
    from privsplit.probes.linkage import LinkageResult, LinkageSpec, probe_encoder_linkage
    from privsplit.run import RunFolder

    parts = text.split(":")
    keying, count = NoiseKeying.parse(parts[0]), int(parts[1])
    frames = Frames(count, jitter=float(parts[2]) if len(parts) > 2 else 0.0)
    tag = f"{keying.value}-f{count}" + (f"-j{frames.jitter:g}" if frames.jitter else "")
    dest = out / tag
    dest.mkdir(parents=True, exist_ok=True)
    folder = RunFolder(run)
    timing: dict[str, float] = {}
    if not (dest / "probe_attributes.json").is_file():
        data, split = folder.dataset(), folder.split()
        t0 = time.perf_counter()
        pipe = EdgePipeline.open(
            bundles / keying.value / "edge", encoder="tflite-int8", seed=seed + 101, noise_key=stand_in_key(seed)
        )
        try:
            encode = averaged_encoder(lambda im: pipe.encode_pixels(im).data.astype(np.float32), frames, seed=seed + 7)
            feats = np.concatenate([encode(data.images[s : s + 256]) for s in range(0, len(data.images), 256)])
        finally:
            pipe.close()
        rows = {_digest(img): i for i, img in enumerate(data.images)}

        def lookup(images: np.ndarray) -> np.ndarray:
            return feats[[rows[_digest(img)] for img in images]]

        source = f"tflite-int8 ({keying.value} noise){frames.described}"
        t1 = time.perf_counter()
        link = probe_encoder_linkage(lookup, data, split, LinkageSpec(seed=seed), progress=False)
        link = replace(link, frames=count, frame_jitter=frames.jitter, features_from=source)
        link.save(dest / "probe_linkage.json")
        print(f"{tag}: {link.summary()}", flush=True)
        t2 = time.perf_counter()
        sweep = probe_attribute_sweep(lookup, data, split, attributes, spec=sweep_spec(seed=seed), progress=False)
        sweep = replace(sweep, frames=count, frame_jitter=frames.jitter, features_from=source)
        sweep.save(dest / "probe_attributes.json")
        print(f"{tag}: {sweep.summary()}", flush=True)
        timing = {"encode_s": t1 - t0, "linkage_s": t2 - t1, "sweep_s": time.perf_counter() - t2}
    link = LinkageResult.load(dest / "probe_linkage.json")
    sweep = AttributeSweepResult.load(dest / "probe_attributes.json")
    excess = {r.name: round(r.excess, 4) for r in sweep.rows}
    return {
        "reading": tag,
        "linkage_auc": link.best.auc,
        "linkage_attacker": link.best.attacker,
        "linkage_null": link.null_auc,
        "linkage_excess": link.auc_excess,
        "tpr_at_fpr_1pct": max(s.tpr_at_fpr_1pct for s in link.scores),
        "rank1": max(s.rank1 for s in link.scores),
        "rank1_chance": link.rank1_chance,
        "attribute_excess": excess,
        "attributes_over_0_05": sorted(n for n, e in excess.items() if e > 0.05),
        **timing,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="the run folder (privsplit train)")
    parser.add_argument("bundles", type=Path, help="folder holding one export per keying: BUNDLES/fresh, BUNDLES/frame")
    parser.add_argument("readings", nargs="+", metavar="KEYING:K[:JITTER]")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/unforeseen"))
    parser.add_argument("--attributes", default="all", help="all, or comma-separated names (default all)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rows = [
        reading(args.run, args.bundles, args.out, r, attributes=args.attributes, seed=args.seed) for r in args.readings
    ]
    for row in rows:
        print(json.dumps(row))
    print(
        f"{'reading':<14} {'linkage AUC':>11} {'null':>6} {'excess':>7} {'TPR@1%':>7} {'rank-1':>7}  attributes > 0.05"
    )
    for r in rows:
        print(
            f"{r['reading']:<14} {r['linkage_auc']:>11.3f} {r['linkage_null'] or 0:>6.3f} {r['linkage_excess']:>+7.3f} "
            f"{r['tpr_at_fpr_1pct']:>7.3f} {r['rank1']:>7.2%}  {', '.join(r['attributes_over_0_05']) or 'none'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
