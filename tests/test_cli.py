"""The command line: help lists a subcommand per method; `sample` writes images and a contact sheet."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from PIL import Image

from protagonist.cli import main
from protagonist.core.interface import ProtagonistError


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


def test_dsd_make_pairs_train_sample(tmp_path):
    from protagonist.core.tiny_models import tiny_dinov2

    tiny_dinov2(0).save_pretrained(str(tmp_path / "dino"))
    (tmp_path / "scenes.txt").write_text("at night\non a beach\nin the snow\nin a city\n")
    common = ["--model", "tiny-flux", "--steps", "2"]
    assert main(["dsd", "make-pairs", *common, "--scenes", str(tmp_path / "scenes.txt"), "--grids", "1",
                 "--threshold", "-1", "--dinov2", str(tmp_path / "dino"), "--out", str(tmp_path / "pairs")]) == 0
    assert main(["dsd", "train", *common, "--pairs", str(tmp_path / "pairs"), "--batch", "2", "--rank", "2",
                 "--out", str(tmp_path / "train")]) == 0
    reference = tmp_path / "pairs" / "grid000000_panel0.png"
    assert main(["dsd", "sample", *common, "--dsd", str(tmp_path / "train" / "dsd.safetensors"), "--rank", "2",
                 "--reference", str(reference), "--out", str(tmp_path / "sample")]) == 0
    assert (tmp_path / "sample" / "frames.png").exists()


def test_oneactor_tune_then_sample(tmp_path):
    common = ["--model", "tiny-sdxl", "--steps", "2", "--out", str(tmp_path)]
    assert main(["oneactor", "tune", *common, "--proposals", "3", "--tune-steps", "2", "--target", "1", "--no-mirror"]) == 0
    assert (tmp_path / "identity.safetensors").exists() and (tmp_path / "proposals.png").exists()
    assert main(["oneactor", "sample", *common, "--identity", str(tmp_path / "identity.safetensors"),
                 "--prompt", "a blob at night", "a blob in the snow"]) == 0
    assert Image.open(tmp_path / "samples.png").width >= 2 * 32 * 4


def test_dsd_make_pairs_with_a_missing_judge_fails_before_any_work(tmp_path):
    (tmp_path / "scenes.txt").write_text("at night\non a beach\nin the snow\nin a city\n")
    with pytest.raises(ProtagonistError, match="no vision-language model"):
        main(["dsd", "make-pairs", "--model", "tiny-flux", "--scenes", str(tmp_path / "scenes.txt"),
              "--judge", str(tmp_path / "no-vlm"), "--out", str(tmp_path / "pairs")])
    assert not (tmp_path / "pairs").exists()


def test_chosen_one_with_an_empty_scenes_file_says_what_to_write(tmp_path):
    (tmp_path / "scenes.txt").write_text("\n  \n")
    with pytest.raises(ProtagonistError, match="no scenes: write one per line"):
        main(["chosen-one", "--model", "tiny-sdxl", "--dinov2", "sprite", "--scenes", str(tmp_path / "scenes.txt"),
              "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
