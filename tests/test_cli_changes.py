"""The user-visible CLI changes of issue 28: EXIF orientation on the device, zero means zero (or is refused),
`privsplit cloud bench` beside `privsplit edge bench` with the old spelling kept as an alias for one release."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from privsplit.cli.main import main

# EXIF orientation -> the transpose a camera applied to the stored pixels (the orientation tag undoes it).
STORED = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


def _photo(bundles, size: int = 96) -> Image.Image:
    """A real holdout digit, upscaled and put off-centre on a wider canvas, so every rotation changes the pixels."""
    from test_edge_support import holdout

    images, _ = holdout(bundles.run, 1)
    digit = Image.fromarray(images[0][..., 0] if images.shape[-1] == 1 else images[0]).convert("RGB")
    canvas = Image.new("RGB", (size + size // 2, size), (0, 0, 0))
    canvas.paste(digit.resize((size, size), Image.Resampling.BILINEAR), (size // 4, 0))
    return canvas


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_exif_orientation_gives_the_same_tensor_and_label(bundles, tmp_path, fmt):
    from privsplit.cloud.model_host import ModelHost
    from privsplit.edge.pipeline import EdgePipeline

    pipe = EdgePipeline.open(bundles.edge, trust_key=bundles.trust_key, seed=0, noise=False)
    host = ModelHost.open(bundles.cloud, name="privsplit", trust_key=bundles.trust_key)
    photo = _photo(bundles)
    suffix = ".png" if fmt == "PNG" else ".jpg"
    upright = tmp_path / f"upright{suffix}"
    photo.save(upright, format=fmt)
    pre = pipe.preprocessor
    reference = pre.decode(upright)
    ref_label = host.infer(pipe.encode_pixels(reference[None]).dequantize()).labels[0]
    for orientation, transpose in STORED.items():
        exif = Image.Exif()
        exif[0x0112] = orientation
        path = tmp_path / f"orientation-{orientation}{suffix}"
        photo.transpose(transpose).save(path, format=fmt, exif=exif)
        with Image.open(path) as stored:  # the file really is stored turned, with the tag
            assert stored.size == (photo.height, photo.width) or orientation == 3
            assert stored.getexif().get(0x0112) == orientation
        pixels = pre.decode(path)
        assert pre.decode_bytes(path.read_bytes()).tolist() == pixels.tolist()
        if fmt == "PNG":  # lossless: exactly the same tensor
            assert np.array_equal(pixels, reference), orientation
            assert np.array_equal(pre.to_input(pixels[None]), pre.to_input(reference[None]))
        else:  # JPEG re-encodes the turned pixels: the same up to compression noise
            assert np.abs(pixels.astype(int) - reference.astype(int)).mean() < 3.0, orientation
        label = host.infer(pipe.encode_pixels(pixels[None]).dequantize()).labels[0]
        assert label == ref_label, orientation
        # without the tag the stored pixels really differ: the test would fail without the EXIF step
        plain = tmp_path / f"plain-{orientation}.png"
        photo.transpose(transpose).save(plain)
        assert np.abs(pre.decode(plain).astype(int) - reference.astype(int)).mean() > 5.0


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["edge", "bench", "EDGE", "--timeout", "0"], "--timeout: '0' must be > 0"),
        (["edge", "infer", "EDGE", "x.png", "--server", "h:1", "--timeout", "0"], "--timeout: '0' must be > 0"),
        (["edge", "bench", "EDGE", "--max-seconds", "0"], "--max-seconds: '0' must be > 0"),
        (["quickstart", "--load-seconds", "0"], "--load-seconds: '0' must be > 0"),
        (["cloud", "bench", "--target", "h:1", "--duration", "0"], "--duration: '0' must be > 0"),
        (["edge", "bench", "EDGE", "--runs", "99999999999"], "too large"),
        (["edge", "bench", "EDGE", "--seed", "-1"], "--seed: '-1' must be >= 0"),
        (["serve", "EDGE", "--grace", "inf"], "not a finite number"),
    ],
)
def test_zero_and_absurd_numbers_are_refused_in_one_line(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and "--help" in err, err


def test_zero_means_zero(bundles, capsys, tmp_path):
    """--warmup 0 runs no warm-up (not the default 10); the JSON records what ran."""
    import json

    out = tmp_path / "bench.json"
    argv = ["edge", "bench", str(bundles.edge), "--trust-key", str(bundles.trust_key), "--warmup", "0", "--runs", "3"]
    argv += ["--json", str(out)]
    assert main(argv) == 0
    spec = json.loads(out.read_text())["spec"]
    assert spec["warmup"] == 0 and spec["runs"] == 3


def test_cloud_bench_and_its_deprecated_alias(capsys):
    new = ["cloud", "bench", "--target", "127.0.0.1:1"]
    old = ["bench", "cloud", "--target", "127.0.0.1:1"]
    assert main(new) == 2
    err_new = capsys.readouterr().err
    assert main(old) == 2
    err_old = capsys.readouterr().err
    assert err_new.count("\n") == 1 and err_old.count("\n") == 1  # the note rides in the one error line
    assert err_new.startswith("privsplit cloud bench: error: pass --bundle") and "deprecated" not in err_new
    assert err_old.startswith("privsplit bench cloud: error: pass --bundle")
    assert "`privsplit bench cloud` is deprecated" in err_old and "use `privsplit cloud bench`" in err_old
    from privsplit.cli.main import build_parser

    parser = build_parser()
    a = parser.parse_args([*new, "--concurrency", "1,4", "--stream"])
    b = parser.parse_args([*old, "--concurrency", "1,4", "--stream"])
    assert a.handler is b.handler and a.concurrency == b.concurrency == (1, 4)
    assert vars(a).keys() - {"cloud_command"} == vars(b).keys() - {"bench_command"}


def test_serve_logs_json_lines_from_every_process_and_rate_bench_against_it(bundles, tmp_path):
    """`privsplit serve --workers 2 --log-format json`: every stderr line of the supervisor and of both workers is
    one JSON object; `privsplit cloud bench --rate` runs its open loop against it over real gRPC, and the one
    metrics endpoint counts every request the bench sent."""
    import json
    import re
    import signal
    import subprocess
    import sys
    import threading
    import time
    import urllib.request

    from test_cloud_support import REPO

    args = ["serve", bundles.cloud, "--port", 0, "--workers", 2, "--metrics-port", 0, "--grace", 2]
    proc = subprocess.Popen(
        [sys.executable, "-m", "privsplit.cli.main", *map(str, args), "--log-format", "json"],
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()

    def wait_for(needle: str, timeout: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(lines):
                if needle in line:
                    return json.loads(line)
            assert proc.poll() is None, "".join(lines)
            time.sleep(0.05)
        raise AssertionError(f"no {needle!r} in:\n{''.join(lines)}")

    try:
        listening = wait_for("with 2 worker processes")
        port = int(re.search(r"127\.0\.0\.1:(\d+)", listening["message"]).group(1))
        metrics = wait_for("(the sum over all workers)")
        url = re.search(r"(http://\S+/metrics)", metrics["message"]).group(1)
        out = tmp_path / "rate.json"
        argv = ["cloud", "bench", "--target", f"127.0.0.1:{port}", "--bundle", str(bundles.cloud), "--rate", "40"]
        assert main([*argv, "--duration", "1", "--warmup", "0.25", "--connections", "4", "--json", str(out)]) == 0
        point = json.loads(out.read_text())["points"][0]
        assert point["offered_rate"] == 40 and point["requests"] == 40 and point["errors"] == 0
        assert point["send_lag_ms_p99"] is not None and point["p99_ms"] >= point["p50_ms"] > 0
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        served = float(re.search(r"^nv_inference_request_success\{[^}]*\} (\S+)$", text, re.M).group(1))
        assert served == 50  # warm-up (10) and measured (40) requests, both workers, one scrape
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        reader.join(5)
    assert code == 0, "".join(lines)
    records = [json.loads(line) for line in lines if line.strip()]  # every line is JSON
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    workers = {r["worker"] for r in records if "worker" in r}
    assert workers == {0, 1} and all(r["level"] == "info" for r in records)
    assert sum(r["message"] == "drained; bye" for r in records if "worker" in r) == 2
    assert any(r["message"] == "all workers drained; bye" and "worker" not in r for r in records)
