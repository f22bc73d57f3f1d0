"""The layer order (pyproject [tool.importlinter]) holds, and the contracts catch a break.

import-linter reads the installed layout (.ci/importable_tree.py), since privsplit.edge & co. live in folders
mapped by package-dir. The same check runs in .ci/run.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
# the `lint-imports` console script, through this interpreter (its bin/ need not be on PATH)
LINT_IMPORTS = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("importlinter") is None,
    reason="import-linter is not installed (pip install -e '.[dev]')",
)


def _tree_module():
    spec = importlib.util.spec_from_file_location("importable_tree", ROOT / ".ci" / "importable_tree.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def site(tmp_path: Path) -> Path:
    _tree_module().build(tmp_path / "site", PYPROJECT)
    return tmp_path / "site"


def _lint(site: Path) -> subprocess.CompletedProcess:
    # run from the scratch folder: the checkout's privsplit/ must not shadow the laid-out package
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run(
        [sys.executable, "-c", LINT_IMPORTS, str(PYPROJECT), "--no-cache"],
        cwd=site.parent,
        env=env,
        capture_output=True,
        text=True,
    )


def test_the_tree_holds_every_package_where_it_is_installed(site):
    tree = _tree_module()
    packages = tree.package_dirs(PYPROJECT)
    assert packages["privsplit.edge"] == ROOT / "edge"
    assert packages["privsplit.proto.inference"] == ROOT / "proto" / "inference"
    for package, source in packages.items():
        target = site.joinpath(*package.split("."))
        sources = sorted(p.name for p in source.iterdir() if p.is_file() and p.suffix in (".py", ".pyi"))
        assert sources and sorted(p.name for p in target.iterdir() if p.is_file()) == sources, package


def test_the_layer_contracts_hold(site):
    proc = _lint(site)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Contracts: 3 kept, 0 broken." in proc.stdout


def test_the_contracts_catch_torch_on_the_edge_and_an_upward_import(site):
    # what a careless edit would do: torch in the edge's preprocessing, the data layer reaching into the CLI
    with (site / "privsplit" / "edge" / "preprocess.py").open("a") as f:
        f.write("\nimport torch  # noqa\n")
    with (site / "privsplit" / "data" / "spec.py").open("a") as f:
        f.write("\nimport privsplit.cli.main  # noqa\n")
    proc = _lint(site)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Contracts: 1 kept, 2 broken." in proc.stdout
    broken = proc.stdout.split("Broken contracts", 1)[1]
    assert "The edge runs without torch, the exporter and the cloud" in broken
    assert "privsplit.edge.preprocess -> torch" in broken
    assert "privsplit.data is not allowed to import privsplit.cli" in broken
    assert "The cloud runs without torch" not in broken
