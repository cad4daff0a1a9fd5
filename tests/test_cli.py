"""The command line: help lists a subcommand per method; `sample` writes images and a contact sheet."""

from __future__ import annotations

import os
import subprocess
import sys

from PIL import Image

from protagonist.cli import main


def test_help_lists_every_method():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}  # also when run from a plain checkout
    result = subprocess.run([sys.executable, "-m", "protagonist", "--help"], capture_output=True, text=True,
                            check=True, env=env)
    for command in ("sample", "chosen-one", "oneactor", "dsd"):
        assert command in result.stdout


def test_sample_writes_seeded_images_and_contact_sheet(tmp_path):
    args = ["sample", "--model", "tiny-sdxl", "--count", "3", "--steps", "2", "--seed", "4", "--batch-size", "2", "--out", str(tmp_path)]
    assert main(args) == 0
    names = sorted(p.name for p in tmp_path.glob("seed*.png"))
    assert names == ["seed000004.png", "seed000005.png", "seed000006.png"]
    sheet = Image.open(tmp_path / "contact_sheet.png")
    assert sheet.width >= 2 * 32 * 4


def test_unimplemented_method_says_so_and_fails():
    assert main(["dsd"]) == 2


def test_oneactor_tune_then_sample(tmp_path):
    common = ["--model", "tiny-sdxl", "--steps", "2", "--out", str(tmp_path)]
    assert main(["oneactor", "tune", *common, "--proposals", "3", "--tune-steps", "2", "--target", "1"]) == 0
    assert (tmp_path / "identity.safetensors").exists() and (tmp_path / "proposals.png").exists()
    assert main(["oneactor", "sample", *common, "--identity", str(tmp_path / "identity.safetensors"),
                 "--prompt", "a blob at night", "a blob in the snow"]) == 0
    assert Image.open(tmp_path / "samples.png").width >= 2 * 32 * 4
