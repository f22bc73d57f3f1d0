"""One representative instance of every result type, built only through public constructors.

The same builders made ``tests/data/results_v1/`` with the privsplit version before ``privsplit.results``
(commit da82146), so ``test_results.py`` can check that files written by that version still load.
"""

from __future__ import annotations

import numpy as np


def samples() -> dict:
    """``{file name: (object, how to load it)}``; ``how`` is "load" (``cls.load(path)``) or "from_json"."""
    from privsplit.cloud.loadgen import LoadPoint, LoadResult, LoadSpec
    from privsplit.data.splits import make_split
    from privsplit.edge.flash import FlashAction, FlashResult
    from privsplit.edge.infer import InferReport, InferResult
    from privsplit.edge.latency import BenchResult, BenchSpec, InputKind, StageStats
    from privsplit.export.parity import FormatParity, ParityReport, TorchReference
    from privsplit.models.config import Arch, ModelConfig
    from privsplit.models.purifier import PurifierConfig
    from privsplit.probes.feature_results import (
        AttackerScore,
        AttributeLeakage,
        FeatureLeakageResult,
        ReconstructionLeakage,
        ReconstructionSamples,
    )
    from privsplit.probes.feature_spec import AttributeAttacker, FeatureProbeSpec
    from privsplit.probes.inversion import InversionMetrics
    from privsplit.probes.mia_metrics import MIAMetrics
    from privsplit.probes.output_results import MIAReport, OutputArrays, OutputProbeResult, OutputProbeSpec
    from privsplit.probes.split_profile import SplitProfile, SplitProfileSpec, SplitRow, SplitRuntime
    from privsplit.quickstart.stages import StageTime
    from privsplit.run import DataConfig, RunConfig
    from privsplit.train.config import TrainConfig

    rng = np.random.default_rng(0)
    model = ModelConfig(
        arch=Arch.SMALL_CNN,
        in_channels=3,
        image_size=32,
        num_classes=2,
        split=2,
        num_private_classes=2,
        mean=(0.5, 0.4, 0.3),
        std=(0.2, 0.25, 0.3),
    )
    data = DataConfig(spec="digits", task="label", private=None, image_size=32, limit=200)
    # no --private, so the run resolved the attribute guard's auto weight to 0 (what RunConfig records)
    train = TrainConfig.preset("strong", epochs=2, adversaries=("linear",), attributes_weight=0.0)
    run = RunConfig(data=data, model=model, seed=3, train=train.to_json())
    mia = MIAMetrics(
        auc=0.61, advantage=0.2, tpr_at_1pct_fpr=0.05, tpr_at_01pct_fpr=0.01, n_members=120, n_nonmembers=120
    )
    inv = InversionMetrics(
        mse=0.05,
        ssim=0.3,
        mse_members=0.049,
        mse_nonmembers=0.051,
        ssim_members=0.31,
        ssim_nonmembers=0.29,
        mean_image_mse=0.07,
        class_mean_mse=0.06,
        top_k=3,
        n_train=400,
    )
    arrays = OutputArrays(
        is_member=np.array([1, 1, 0, 0]),
        scores={"raw/loss": rng.normal(size=4), "purified/loss": rng.normal(size=4)},
        top_prob={"raw": rng.random(4), "purified": rng.random(4)},
        images=rng.integers(0, 255, (4, 8, 8, 3), dtype=np.uint8),
        reconstructions={"raw": rng.random((4, 3, 8, 8)), "purified": rng.random((4, 3, 8, 8))},
    )
    outputs = OutputProbeResult(
        run="runs/protected",
        spec=OutputProbeSpec(seed=1, shadows=2, max_per_side=60),
        n_members=120,
        n_nonmembers=120,
        n_shadow_train=300,
        noise_seed=102,
        accuracy=0.9,
        accuracy_members=0.97,
        accuracy_purified=0.89,
        accuracy_members_purified=0.96,
        label_agreement=0.99,
        label_agreement_members=1.0,
        distortion_pct=12.5,
        distortion_pct_members=3.25,
        mia=MIAReport.from_metrics(0.55, {"loss": mia}),
        mia_purified=MIAReport.from_metrics(0.55, {"loss": mia}),
        inversion=inv,
        inversion_purified=inv,
        purifier={"config": PurifierConfig(num_classes=10).to_json(), "training": {"mode": "ae", "epochs": 3}},
        arrays=arrays,
    )
    samples_ = ReconstructionSamples(
        originals=rng.integers(0, 255, (2, 8, 8, 3), dtype=np.uint8),
        reconstructions=rng.integers(0, 255, (2, 8, 8, 3), dtype=np.uint8),
        mean_image=rng.random((8, 8, 3)),
    )
    features = FeatureLeakageResult(
        source="digits",
        task="label",
        image_shape=(32, 32, 3),
        feature_shape=(4, 8, 8),
        feature_dtype="int8",
        attacker_size=300,
        holdout_size=200,
        spec=FeatureProbeSpec(attackers=(AttributeAttacker.LOGISTIC, AttributeAttacker.MLP), epochs=5, seed=2),
        attribute=AttributeLeakage(
            name="smile",
            classes=("no", "yes"),
            chance=0.5,
            task_floor=0.55,
            task_floor_auc=None,
            attackers={
                "logistic": AttackerScore(0.62, 0.66, 0.6, "C=0.1"),
                "mlp": AttackerScore(0.64, None, None, "epoch 3"),
            },
        ),
        reconstruction=ReconstructionLeakage(
            ssim=0.4,
            psnr=18.5,
            mse=0.02,
            baseline_ssim=0.2,
            baseline_psnr=15.0,
            baseline_mse=0.04,
            best_epoch=4,
            epochs=5,
            samples=samples_,
        ),
        runtime_s=12.5,
        task_accuracy=0.93,
    )
    parity = ParityReport(
        run="runs/protected",
        holdout_size=200,
        tolerance=0.01,
        noise_sigma=1.0,
        seed=0,
        calibration_size=64,
        wire={"shape": [4, 8, 8], "dtype": "int8"},
        reference=TorchReference(task_accuracy=0.9, attribute_balanced_accuracy=0.6, attribute_chance=0.5),
        formats=(
            FormatParity(
                format="onnx-int8",
                passed=True,
                reason="",
                size_bytes=4096,
                size_ratio=0.26,
                max_abs_err=0.01,
                cosine=0.999,
                task_accuracy=0.895,
                task_accuracy_torch=0.9,
                input={"shape": [1, 3, 32, 32]},
            ),
            FormatParity(format="tflite-fp16", passed=False, reason="converter failed"),
        ),
        probe={"epochs": 5},
        cloud={"server": {"max_abs_err": 1e-6}, "purifier": None},
    )
    stats = StageStats(mean_ms=1.5, p50_ms=1.4, p90_ms=2.0, p99_ms=2.5)
    bench = BenchResult(
        spec=BenchSpec(runtime="onnxruntime", threads=2, runs=20, input=InputKind.FRAME),
        runtime="onnxruntime",
        encoder="encoder-onnx-int8",
        bundle_version="1.0.0",
        input_desc="synthetic 32x32 JPEG",
        init_ms=35.0,
        connect_ms=None,
        first_ms=3.0,
        runs=20,
        mean_ms=1.5,
        p50_ms=1.4,
        p90_ms=2.0,
        p99_ms=2.5,
        peak_rss_mb=80.0,
        stages={"decode": stats, "encode": stats},
        bytes_per_request=400,
        bytes_float32_request=1200,
        bytes_input_jpeg=900,
        feature_bytes=256,
        platform={"machine": "x86_64"},
        samples_ms=(1.4, 1.5, 1.6),
    )
    infer = InferReport(
        pipeline={"runtime": "onnxruntime"},
        server="localhost:8001",
        results=(
            InferResult(source="a.png", label=1, class_name="yes", confidence=0.9, probs=(0.1, 0.9), latency_ms=2.0),
            InferResult(source="b.png", error="cannot decode b.png"),
        ),
    )
    flash = FlashResult(
        target="/dev/x",
        version="1.0.0",
        previous=None,
        action=FlashAction.INSTALLED,
        uploaded_bytes=2048,
        kept=("1.0.0",),
        removed=(),
        seconds=0.25,
    )
    point = LoadPoint(
        concurrency=4,
        stream=False,
        requests=100,
        errors=1,
        duration_s=1.0,
        throughput=99.0,
        rows_per_s=99.0,
        p50_ms=2.0,
        p90_ms=3.0,
        p99_ms=4.0,
        mean_ms=2.2,
        server_compute_us_p50=150.0,
        server_queue_us_p50=20.0,
        batch_size_mean=1.5,
        error_codes={"UNAVAILABLE": 1},
        latency_sample_ms=(1.9, 2.1),
    )
    load = LoadResult(
        spec=LoadSpec(target="localhost:8001", concurrency=(1, 4), duration_s=1.0),
        points=(point,),
        request_bytes=400,
        rows_per_request=1,
        label="unary",
    )
    profile = SplitProfile(
        run="runs/protected",
        arch="small-cnn",
        image_size=32,
        spec=SplitProfileSpec(bandwidth_mbps=5.0, budget_ms=20.0, runtime=SplitRuntime.TORCH, samples=16, runs=30),
        rows=(
            SplitRow(
                split=1,
                trained=False,
                feature_shape=(4, 16, 16),
                request_bytes=1100,
                device_ms=0.5,
                server_ms=1.0,
                uplink_ms=1.7,
                total_ms=3.2,
                dcor=0.8,
                private_balanced_accuracy=None,
            ),
        ),
        suggested=1,
        within_budget=True,
        reason="fastest",
        private_chance=None,
    )
    return {
        "config.json": (run, "from_json"),
        "split.json": (make_split(40, seed=5), "load"),
        "purifier_config.json": (PurifierConfig(num_classes=10, hidden=7), "from_json"),
        "mia_metrics.json": (mia, "from_json"),
        "probe_outputs.json": (outputs, "load"),
        "probe_features.json": (features, "load"),
        "parity.json": (parity, "load"),
        "edge_bench.json": (bench, "from_json"),
        "edge_infer.json": (infer, "from_json"),
        "flash.json": (flash, "to_json"),
        "cloud_load.json": (load, "from_json"),
        "split_profile.json": (profile, "from_json"),
        "stage.json": (StageTime(name="train", seconds=1.25, detail="acc 0.9"), "from_json"),
    }


def write_all(folder) -> None:
    """Write every sample into ``folder`` the way the running privsplit version writes it."""
    import json
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, (obj, _) in samples().items():
        if hasattr(obj, "save"):
            obj.save(folder / name)
        else:
            (folder / name).write_text(json.dumps(obj.to_json(), indent=2) + "\n")
