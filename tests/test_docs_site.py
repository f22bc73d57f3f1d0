"""The documentation: the site builds with warnings as errors, the CLI reference covers the whole command, every
command written in the docs parses, the runnable walk-throughs run as written, and the README stays a front page.

CI runs the README's test command, so this file is how CI builds the site (`mkdocs build --strict`).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
README = REPO / "README.md"


def _reference_module():
    spec = importlib.util.spec_from_file_location("cli_reference", DOCS / "hooks" / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _walk(parser: argparse.ArgumentParser, path: str):
    """(command path, parser) of the command and of every subcommand below it, aliases skipped."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    yield from _walk(sub, f"{path} {name}")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    pytest.importorskip("mkdocs", reason="mkdocs is in the dev extra: pip install -e '.[dev]'")
    pytest.importorskip("material", reason="mkdocs-material is in the dev extra: pip install -e '.[dev]'")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(REPO / "mkdocs.yml"), "-d", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "WARNING" not in proc.stderr, proc.stderr
    return out


def test_site_builds_strict_with_every_section(site):
    for page in (
        "index.html",
        "getting-started/index.html",
        "concepts/threat-model/index.html",
        "concepts/probes/index.html",
        "concepts/chance-floor-null/index.html",
        "guides/train/index.html",
        "guides/probe/index.html",
        "guides/purify/index.html",
        "guides/defend-membership/index.html",
        "guides/export-sign/index.html",
        "guides/flash/index.html",
        "guides/serve/index.html",
        "guides/deploy-at-scale/index.html",
        "guides/train-at-scale/index.html",
        "guides/devices/index.html",
        "reference/cli/index.html",
        "results/index.html",
        "changelog/index.html",
    ):
        assert (site / page).is_file(), page
    changelog = (site / "changelog" / "index.html").read_text()
    assert "Unreleased" in changelog and "Keep a Changelog" in changelog  # the snippet pulled CHANGELOG.md in


def test_cli_reference_has_every_command_option_and_exit_code(site):
    from privsplit.cli.main import build_parser
    from privsplit.errors import EXIT_CODES

    text = _reference_module().render()
    built = (site / "reference" / "cli" / "index.html").read_text()
    commands = list(_walk(build_parser(), "privsplit"))
    assert len(commands) > 15
    for path, parser in commands:
        assert f"`{path}`" in text, path
        for action in parser._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            for option in action.option_strings:
                assert f"`{option}" in text, (path, option)
                assert option in built, (path, option)
    table = text.split("## Exit codes", 1)[1]
    for exit_code in EXIT_CODES:
        assert re.search(rf"^\| {exit_code.code} \| ", table, re.M), exit_code
        assert exit_code.meaning.split(";")[0].split("(")[0].strip() in table, exit_code
    assert {6, 7, 8, 75} <= {e.code for e in EXIT_CODES}  # the codes the issue found undocumented


def _doc_commands() -> list[tuple[Path, str]]:
    """Every `privsplit ...` command in a bash block of the docs and the README (continuations joined)."""
    found = []
    for page in [README, *sorted(DOCS.rglob("*.md"))]:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                for part in line.split("&&"):
                    words = shlex.split(part, comments=True)
                    if words and Path(words[0]).name == "privsplit":
                        found.append((page, " ".join(words[1:])))
    return found


def test_every_documented_command_parses():
    from privsplit.cli.main import build_parser

    commands = _doc_commands()
    assert len(commands) > 25
    failed = []
    for page, command in commands:
        try:
            args = build_parser().parse_args(shlex.split(command))
        except SystemExit:
            failed.append(f"{page.relative_to(REPO)}: privsplit {command}")
            continue
        assert getattr(args, "handler", None), command
    assert not failed, "commands in the docs that privsplit refuses:\n" + "\n".join(failed)


def _block(page: Path, name: str) -> list[str]:
    text = page.read_text()
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    assert begin in text and end in text, f"{page} lost the {name} markers"
    block = text.split(begin, 1)[1].split(end, 1)[0]
    return [line for line in block.splitlines() if line.startswith("privsplit ")]


def test_local_flash_walkthrough_runs_as_written(bundles, tmp_path):
    """docs/guides/flash.md: verify, flash to a folder and bench the device path, on a bundle the tests exported
    laid out as the quickstart leaves it."""
    commands = _block(DOCS / "guides" / "flash.md", "local-flash")
    assert len(commands) == 3, commands
    quickstart = tmp_path / "runs" / "quickstart"
    shutil.copytree(bundles.edge, quickstart / "export" / "edge")
    (quickstart / "keys").mkdir()
    shutil.copy(bundles.trust_key, quickstart / "keys" / "privsplit.pub")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for command in commands:
        proc = subprocess.run(
            ["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env
        )
        assert proc.returncode == 0, (command, proc.stdout, proc.stderr)
    assert (tmp_path / "runs" / "device" / "current").resolve().is_dir()
    bench = (tmp_path / "runs" / "device" / "bench.json").read_text()
    assert '"runs": 20' in bench


def test_readme_is_a_front_page():
    text = README.read_text()
    assert len(text.splitlines()) <= 150
    # the two commands, verbatim (.ci/run runs the second)
    assert (
        'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[all]" && privsplit quickstart '
        "--out runs/quickstart" in text
    )
    assert (
        'python3 -m venv .venv && . .venv/bin/activate && pip install -q -e ".[all,dev]" && python -m pytest -q -rfEs'
        in text
    )
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(images) == 1
    picture = REPO / images[0]
    assert picture.is_file() and picture.stat().st_size < 200_000
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if not target.startswith("http"):
            assert (REPO / target).exists(), target
    assert (REPO / "LICENSE").read_text().startswith("\n                                 Apache License")
    assert (
        "Apache License" in (REPO / "LICENSE").read_text()
        and "END OF TERMS AND CONDITIONS" in (REPO / "LICENSE").read_text()
    )
