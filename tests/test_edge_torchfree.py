"""The device side runs without torch: a child interpreter in which ``import torch`` (and the torch-side
packages of privsplit) fail runs ``privsplit edge infer`` against a real server, ``edge bench`` and
``flash``, and ends with none of them in ``sys.modules``."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from test_edge_support import holdout, write_pngs

from privsplit.cloud import ServeConfig, create_server

pytestmark = pytest.mark.slow  # the session's bundles (training + export, shared with the other edge tests)

BLOCKED = (
    "torch",
    "torchvision",
    "privsplit.export",
    "privsplit.cloud",
    "privsplit.train",
    "privsplit.models",
    "privsplit.probes",
)

CHILD = textwrap.dedent(
    """
    import importlib.abc, json, sys

    BLOCKED = {blocked!r}

    def blocked(name):
        return any(name == b or name.startswith(b + ".") for b in BLOCKED)

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if blocked(name):
                raise ImportError(f"{{name}} is blocked: the edge must not need it")
            return None

    sys.meta_path.insert(0, Blocker())
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("the blocker did not block torch")

    import privsplit.edge  # noqa: F401
    from privsplit.cli.main import main

    codes = [main(args) for args in json.loads(sys.argv[1])]
    print("RESULT " + json.dumps({{"codes": codes, "leaked": sorted(m for m in sys.modules if blocked(m))}}))
    """
)


def test_edge_infer_bench_and_flash_run_without_torch(bundles, tmp_path):
    images, labels = holdout(bundles.run, 6)
    write_pngs(images, tmp_path / "imgs")
    srv, port = create_server(ServeConfig(bundle=bundles.cloud, port=0))
    commands = [
        [
            "edge",
            "infer",
            str(bundles.edge),
            "--trust-key",
            str(bundles.trust_key),
            "--server",
            f"127.0.0.1:{port}",
            str(tmp_path / "imgs"),
            "--json",
        ],
        [
            "edge",
            "bench",
            str(bundles.edge),
            "--trust-key",
            str(bundles.trust_key),
            "--runs",
            "5",
            "--warmup",
            "1",
            "--json",
            str(tmp_path / "bench.json"),
        ],
        [
            "edge",
            "bench",
            str(bundles.edge),
            "--trust-key",
            str(bundles.trust_key),
            "--runtime",
            "onnxruntime",
            "--runs",
            "5",
            "--warmup",
            "1",
            "--frames",
        ],
        [
            "flash",
            str(bundles.edge),
            "--to",
            str(tmp_path / "device"),
            "--trust-key",
            str(bundles.trust_key),
        ],
    ]
    with srv:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD.format(blocked=BLOCKED), json.dumps(commands)],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.rsplit("RESULT ", 1)[1])
    assert result == {"codes": [0, 0, 0, 0], "leaked": []}
    report = json.loads(proc.stdout[proc.stdout.index("{") : proc.stdout.index("edge bench:")])
    assert report["failed"] == 0 and len(report["results"]) == 6
    assert sum(r["label"] == int(y) for r, y in zip(report["results"], labels)) >= 5
    assert json.loads((tmp_path / "bench.json").read_text())["runtime"] == "litert"
    assert (tmp_path / "device" / "current").resolve().name == report["pipeline"]["version"]
