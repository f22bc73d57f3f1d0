"""The `privsplit` command: --help everywhere, one-line errors with exit code 2 on bad input."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from privsplit.cli.main import build_parser, main


def _subcommand_paths(parser, prefix=()):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from _subcommand_paths(sub, (*prefix, name))


def test_every_subcommand_has_help(capsys):
    paths = list(_subcommand_paths(build_parser()))
    assert ("train",) in paths and ("probe", "features") in paths
    for path in paths:
        with pytest.raises(SystemExit) as exc:
            main([*path, "--help"])
        assert exc.value.code == 0, path
        assert "usage: privsplit" in capsys.readouterr().out


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "privsplit.cli.main", *args], capture_output=True, text=True, timeout=120
    )


def _assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_bad_spec_is_one_line_exit_2(tmp_path):
    _assert_one_line_error(
        _run_cli("train", "--data", "nosuch:x", "--out", str(tmp_path / "r")), "unknown dataset spec", "digits"
    )


def test_missing_folder_is_named(tmp_path):
    missing = tmp_path / "nothere"
    _assert_one_line_error(_run_cli("train", "--data", f"celeba:{missing}", "--out", str(tmp_path / "r")), str(missing))


def test_unknown_attribute_lists_the_available_ones(tmp_path):
    _assert_one_line_error(
        _run_cli("train", "--data", "digits", "--task", "Smiling", "--out", str(tmp_path / "r")), "'Smiling'", "digit"
    )


def test_unreadable_image_is_named(tmp_path, capsys):
    folder = tmp_path / "faces"
    folder.mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(folder / "ok.png")
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    (folder / "labels.csv").write_text("file,smile\nok.png,1\nbroken.jpg,0\n")
    code = main(["train", "--data", f"folder:{folder}", "--task", "smile", "--out", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "broken.jpg" in err[0]


def test_bad_split_fractions(capsys, tmp_path):
    code = main(["train", "--data", "digits", "--split", "0.9,0.9,0.1,0.1", "--out", str(tmp_path / "r"), "--quiet"])
    assert code == 2
    assert "sum to at most 1" in capsys.readouterr().err


def test_probe_on_a_folder_that_is_not_a_run(capsys, tmp_path):
    code = main(["probe", "features", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "privsplit train" in err[0]


def test_train_threads_sets_torch_threads_for_the_run(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    try:
        argv = ["train", "--data", "digits", "--limit", "120", "--epochs", "1", "--head-epochs", "0", "--quiet"]
        assert main([*argv, "--threads", "1", "--out", str(tmp_path / "r")]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--data", "digits", "--threads", "0", "--out", str(tmp_path / "s")])
    assert exit_.value.code == 2 and "--threads: '0' must be > 0" in capsys.readouterr().err
