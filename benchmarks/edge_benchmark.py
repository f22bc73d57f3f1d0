"""Edge benchmark (issue 5): latency of every backend and format on this machine, next to PyTorch eager.

Two encoders: the CelebA encoder at 64 px (small CNN, 4-channel bottleneck, channel noise 1.0) and a
MobileNetV2 prefix (7 blocks) at 224 px. Each is trained briefly (latency does not depend on how well
it is trained) unless a run is given, exported to all six formats (parity measured, but the tolerance
is opened: this benchmark is about speed), and every shipped encoder is measured with
``privsplit edge bench`` in its own process (clean peak RSS), all with the same settings:

* ``frame``: a uint8 camera frame at the model size (no decode): the encode latency and the device
  pipeline overhead (everything but encode) as a share of encode;
* ``file``: a real CelebA JPEG (178x218) decoded, cropped and resized every run;
* ``rpc``: the default encoder against ``privsplit serve`` on 127.0.0.1 (a separate process).

PyTorch eager runs the same encoder on the same thread count. ``--edge-python`` runs the edge side
with another interpreter (e.g. a torch-free venv that also has tflite-runtime, which needs numpy<2).

    python benchmarks/edge_benchmark.py                      # trains two small runs first (a few minutes)
    python benchmarks/edge_benchmark.py --celeba-run RUN --mbv2-run RUN --runs 300

Writes benchmarks/results/edge/{edge_benchmark.json, table.txt, bench/*.json}. Goals: INT8 TFLite at
most 0.5x PyTorch eager latency; pipeline overhead at most 10 % of encode at 224 px; INT8 features at
most 0.25x float32 bytes.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from privsplit.results import read_json, save_json

ROOT = Path(__file__).resolve().parents[1]
CELEBA = ROOT / ".." / "shared" / "data" / "celeba-10k"
SCHEMA_VERSION = 1
RUNTIMES = {"tflite": ("litert", "tflite-runtime"), "onnx": ("onnxruntime",)}


def _train(out: Path, *, arch: str, size: int, limit: int, seed: int) -> Path:
    from privsplit.train import TrainConfig, train_run

    if (out / "config.json").is_file():
        return out
    config = TrainConfig(
        epochs=1, adv_weight=0.0, noise_sigma=1.0, feature_channels=4, head_finetune_epochs=0, arch=arch, batch_size=64
    )
    train_run(
        f"celeba:{CELEBA}",
        out,
        task="Smiling",
        private="Male",
        image_size=size,
        limit=limit,
        seed=seed,
        config=config,
        progress=False,
    )
    return out


def _export(run: Path, out: Path) -> Path:
    from privsplit.export import ALL_FORMATS, export_run

    if (out / "edge" / "manifest.json").is_file():
        return out
    export_run(
        run, out, formats=ALL_FORMATS, calibration=64, tolerance=0.99, holdout_limit=256, overwrite=True, progress=False
    )
    return out


def _torch_eager(run: Path, frame, *, threads: int, runs: int) -> dict:
    import numpy as np
    import torch

    from privsplit.run import RunFolder

    model = RunFolder(run).load_split_model().eval()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = model.preprocess(frame[None])
        times = []
        with torch.no_grad():
            for i in range(runs + 20):
                t = time.perf_counter()
                model.encoder(x)
                if i >= 20:
                    times.append((time.perf_counter() - t) * 1e3)
    finally:
        torch.set_num_threads(previous)
    p50, p90, p99 = np.percentile(times, [50, 90, 99])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "mean_ms": float(np.mean(times))}


def _bench(python: str, bundle: Path, out: Path, args: list[str]) -> dict | None:
    # the benchmark's export is unsigned (a latency measurement, not a deployment): say so explicitly
    cmd = [python, "-m", "privsplit.cli.main", "edge", "bench", str(bundle), "--allow-unsigned", "--json", str(out)]
    cmd += args
    env = dict(os.environ, OMP_NUM_THREADS="1", PRIVSPLIT_PROGRESS="0")
    # not from the repository root: there `python -m` would import the source tree, not the installed edge package
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=out.parent)
    if proc.returncode != 0:
        print(
            f"  skipped ({proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode})",
            file=sys.stderr,
        )
        return None
    return read_json(out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(cloud: Path):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "privsplit.cli.main", "serve", str(cloud), "--port", str(port), "--max-batch", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("privsplit serve did not start")


def measure_model(name: str, run: Path, export: Path, image: Path, args, results: Path) -> dict:
    import numpy as np
    from PIL import Image

    from privsplit.bundle import load_bundle
    from privsplit.edge.preprocess import Preprocessor

    edge = load_bundle(export / "edge")
    some_input = next(iter(edge.manifest["encoders"].values()))["input"]
    from privsplit.bundle import TensorSpec

    pre = Preprocessor.from_manifest(edge.manifest, TensorSpec.from_json(some_input))
    frame = pre.decode(image)  # the model-size frame a camera pipeline would hand over
    frame_file = results / f"{name}-frame.png"
    Image.fromarray(frame[..., 0] if frame.shape[-1] == 1 else frame).save(frame_file)
    common = ["--threads", str(args.threads), "--warmup", str(args.warmup), "--runs", str(args.runs), "--seed", "0"]
    rows = []
    for fmt, entry in edge.manifest["encoders"].items():
        for runtime in RUNTIMES[entry["runtime"]]:
            print(f"{name}: {fmt} on {runtime}", file=sys.stderr, flush=True)
            tag = f"{name}-{fmt}-{runtime}"
            frame_res = _bench(
                args.edge_python,
                export / "edge",
                results / "bench" / f"{tag}-frame.json",
                ["--encoder", fmt, "--runtime", runtime, "--image", str(frame_file), "--frames", *common],
            )
            if frame_res is None:
                continue
            file_res = _bench(
                args.edge_python,
                export / "edge",
                results / "bench" / f"{tag}-file.json",
                ["--encoder", fmt, "--runtime", runtime, "--image", str(image), *common],
            )
            rows.append({"format": fmt, "runtime": runtime, "frame": frame_res, "file": file_res})
    torch = _torch_eager(run, frame, threads=args.threads, runs=args.runs)
    rpc = None
    if not args.no_server:
        proc, port = _serve(export / "cloud")
        try:
            print(f"{name}: default encoder with the RPC to 127.0.0.1:{port}", file=sys.stderr, flush=True)
            rpc = _bench(
                args.edge_python,
                export / "edge",
                results / "bench" / f"{name}-rpc.json",
                ["--image", str(frame_file), "--frames", "--server", f"127.0.0.1:{port}", *common],
            )
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    cfg = read_json(run / "config.json")["model"]
    return {
        "name": name,
        "run": str(run),
        "model": cfg,
        "image": image.name,
        "image_bytes": image.stat().st_size,
        "torch_eager": torch,
        "rows": rows,
        "rpc": rpc,
        "default_encoder": edge.manifest["default_encoder"],
        "features": edge.manifest["features"],
        "frame_shape": list(np.asarray(frame).shape),
    }


def goals(models: list[dict]) -> dict:
    out = {}
    for m in models:
        int8 = [r for r in m["rows"] if r["format"] == "tflite-int8" and r["runtime"] == "litert"]
        if int8:
            ratio = int8[0]["frame"]["stages"]["encode"]["p50_ms"] / m["torch_eager"]["p50_ms"]
            out[f"{m['name']}: tflite-int8 (litert) <= 0.5x torch eager"] = {
                "value": round(ratio, 3),
                "met": ratio <= 0.5,
            }
            share = int8[0]["frame"]["overhead_share"]
            key = f"{m['name']}: pipeline overhead <= 10% of encode (frames)"
            # the goal is set at 224 px; at 64 px it is reported for information (encode is ~0.1 ms there)
            out[key] = {"value": round(share, 4), "met": share <= 0.10 if m["model"]["image_size"] >= 224 else None}
            f = int8[0]["frame"]
            fb = f["feature_bytes"] / (4 * f["feature_bytes"])
            out[f"{m['name']}: int8 features <= 0.25x float32"] = {
                "value": fb,
                "request_ratio": round(f["bytes_per_request"] / f["bytes_float32_request"], 4),
                "met": fb <= 0.25,
            }
    return out


def table(models: list[dict]) -> str:
    lines = []
    for m in models:
        t = m["torch_eager"]
        lines.append(
            f"== {m['name']}: {m['model']['arch']} {m['model']['image_size']} px, split {m['model']['split']}, "
            f"features {'x'.join(map(str, m['features']['shape']))} int8 (noise {m['features']['noise_sigma']})"
        )
        lines.append(
            f"{'format':<15}{'runtime':<15}{'init':>8}{'first':>8}{'enc p50':>9}{'enc p99':>9}{'x torch':>8}"
            f"{'frame p50':>10}{'ovh %':>7}{'file p50':>9}{'decode':>8}{'RSS MB':>8}"
        )
        lines.append(
            f"{'pytorch eager':<15}{'torch':<15}{'':>8}{'':>8}{t['p50_ms']:>9.3f}{t['p99_ms']:>9.3f}{1.0:>8.2f}"
        )
        for r in m["rows"]:
            f, g = r["frame"], r["file"] or {}
            enc = f["stages"]["encode"]
            lines.append(
                f"{r['format']:<15}{r['runtime']:<15}{f['init_ms']:>8.1f}{f['first_ms']:>8.2f}{enc['p50_ms']:>9.3f}{enc['p99_ms']:>9.3f}"
                f"{enc['p50_ms'] / t['p50_ms']:>8.2f}{f['p50_ms']:>10.3f}{100 * f['overhead_share']:>7.1f}"
                f"{g.get('p50_ms', float('nan')):>9.3f}"
                f"{g.get('stages', {}).get('decode', {}).get('p50_ms', float('nan')):>8.3f}{f['peak_rss_mb']:>8.0f}"
            )
        f = m["rows"][0]["frame"] if m["rows"] else None
        if f:
            lines.append(
                f"bytes/request {f['bytes_per_request']} (int8 features {f['feature_bytes']}); float32 request "
                f"{f['bytes_float32_request']} ({f['bytes_per_request'] / f['bytes_float32_request']:.3f}x); "
                "JPEG q90 of the "
                f"{m['frame_shape'][0]} px input {f['bytes_input_jpeg']} "
                f"({f['bytes_per_request'] / f['bytes_input_jpeg']:.2f}x); "
                f"source JPEG {m['image_bytes']}"
            )
        if m["rpc"]:
            r = m["rpc"]
            lines.append(
                f"with RPC ({r['encoder']} on {r['runtime']}): p50 {r['p50_ms']:.3f} ms, "
                f"p99 {r['p99_ms']:.3f} ms; rpc p50 "
                f"{r['stages']['rpc']['p50_ms']:.3f} ms "
                f"of which server compute+queue {r['stages']['server']['p50_ms']:.3f} ms"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--celeba-run", type=Path, help="CelebA 64 px run (default: train one briefly under --out/runs)")
    p.add_argument("--mbv2-run", type=Path, help="MobileNetV2 224 px run (default: train one briefly under --out/runs)")
    p.add_argument(
        "--limit", type=int, default=1200, help="CelebA images for the brief training runs (default %(default)s)"
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--edge-python", default=sys.executable, help="interpreter for the edge side (default: this one)")
    p.add_argument("--no-server", action="store_true", help="skip the RPC measurement")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "edge")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not (CELEBA / "list_attr_celeba.txt").is_file():
        print(f"CelebA not found at {CELEBA} (see ../shared/data/README.md)", file=sys.stderr)
        return 2
    (args.out / "bench").mkdir(parents=True, exist_ok=True)
    image = sorted((CELEBA / "img_align_celeba").iterdir())[0]
    started = time.perf_counter()
    load_before = os.getloadavg()
    specs = [("celeba64", args.celeba_run, "small-cnn", 64), ("mbv2-224", args.mbv2_run, "mobilenet-v2", 224)]
    models = []
    for name, run, arch, size in specs:
        print(f"{name}: preparing the run and its export", file=sys.stderr, flush=True)
        run = run or _train(args.out / "runs" / name, arch=arch, size=size, limit=args.limit, seed=args.seed)
        export = _export(run, args.out / "export" / name)
        models.append(measure_model(name, run, export, image, args, args.out))
    result = {
        "schema_version": SCHEMA_VERSION,
        "threads": args.threads,
        "runs": args.runs,
        "warmup": args.warmup,
        "edge_python": args.edge_python,
        "cpu_count": os.cpu_count(),
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "seconds": round(time.perf_counter() - started, 1),
        "models": models,
        "goals": goals(models),
    }
    save_json(args.out / "edge_benchmark.json", result)
    mark = {True: "MET ", False: "MISS", None: "info"}
    text = (
        table(models)
        + "goals:\n"
        + "\n".join(f"  {mark[g['met']]} {k}: {g['value']}" for k, g in result["goals"].items())
    )
    text += (
        f"\n(load average before/after: {load_before[0]:.1f} / {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)\n"
    )
    (args.out / "table.txt").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
