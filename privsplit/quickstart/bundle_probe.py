"""The feature-leakage probe on an export as the device runs it: the shipped encoder through the device pipeline,
device noise (fresh or frame-keyed) included, with the cloud bundle's task accuracy beside it.

It needs the edge pipeline and the cloud host, so it sits above both (``privsplit probe features --bundle`` and the
quickstart's repeated-frames stage call it).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path


def probe_bundle_features(
    folder, bundle: Path, spec, *, encoder: str = "tflite-int8", progress: bool = True, device=None, frames=None
):
    """The probe on an export's ``encoder`` as the device runs it: int8 wire features, device noise included.

    ``bundle`` is ``privsplit export``'s output folder (``bundle/edge``, ``bundle/cloud``). The attackers see
    :meth:`EdgePipeline.encode_pixels` output (noise seeded ``spec.seed + 1``); the task accuracy is the cloud
    bundle's server layers (and purifier) on the holdout's wire features (noise seeded with the run's
    ``eval_noise_seed``). Saves ``RUN/probe_features.ENCODER.json`` and returns the result.
    """
    from privsplit.cloud.model_host import ModelHost
    from privsplit.data import Part
    from privsplit.edge.pipeline import EdgePipeline
    from privsplit.errors import ConfigError
    from privsplit.noise_keying import NoiseKeying, stand_in_key
    from privsplit.probes.feature_probe import probe_features
    from privsplit.probes.frames import Frames, averaged_encoder

    frames = frames or Frames()

    bundle = Path(bundle)
    edge_dir, cloud_dir = bundle / "edge", bundle / "cloud"
    if not (edge_dir.is_dir() and cloud_dir.is_dir()):
        raise ConfigError(f"{bundle} holds no edge/ and cloud/ bundles: give --bundle the --out of `privsplit export`")
    data, split = folder.dataset(), folder.split()
    key = stand_in_key(spec.seed)  # frame-keyed bundles: any key the operator lacks reads the same
    probe_pipe = EdgePipeline.open(
        edge_dir, encoder=encoder, seed=spec.seed + 1, noise=not frames.noise_free, noise_key=key
    )
    # the task reads the run's seeded holdout draw, as train and export do (keyed noise has the same marginal)
    task_pipe = EdgePipeline.open(
        edge_dir, encoder=encoder, seed=folder.eval_noise_seed(), noise_keying=NoiseKeying.FRESH
    )
    host = ModelHost.open(cloud_dir, name="probe")
    try:
        size = probe_pipe.preprocessor.spec.size
        if tuple(data.images.shape[1:3]) != (size, size):
            raise ConfigError(f"{bundle} expects {size} px images, the run's data are {data.images.shape[1]} px")
        holdout = data.subset(split[Part.HOLDOUT])
        correct = 0
        for start in range(0, len(holdout), 256):
            wire = task_pipe.encode_pixels(holdout.images[start : start + 256])
            labels = host.infer(wire.dequantize()).labels
            correct += int((labels == holdout.task_labels[start : start + 256]).sum())
        accuracy = correct / len(holdout)
        result = probe_features(
            averaged_encoder(lambda images: probe_pipe.encode_pixels(images).data, frames, seed=spec.seed + 4),
            data,
            split,
            spec=spec,
            progress=progress,
            device=device,
        )
    finally:
        probe_pipe.close()
        task_pipe.close()
    result = replace(result, features_from=f"{encoder} {bundle}{frames.described}").with_task_accuracy(
        accuracy, noise_sigma=float(probe_pipe.wire.noise_sigma), noise_seed=folder.eval_noise_seed()
    )
    result.save(folder.file(f"probe_features.{encoder}{frames.tag}.json"))
    return result
