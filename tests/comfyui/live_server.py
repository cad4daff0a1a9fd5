"""A real ComfyUI server process in a throw-away base directory, with this pack installed as `git clone` would.

Used by the clean-install test and the browser test. The base directory (models, custom_nodes, input,
output, user) lives under a temporary folder, the database is in memory, so nothing is written into the
ComfyUI checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .conftest import COMFYUI_PATH, PACK_ROOT

PACK_FOLDER = "ComfyUI-Protagonist"
FRONT_END_SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.InstalledVersion": "1.27.10",
                      "Comfy.Release.Version": "1.27.10", "Comfy.Release.Status": "skipped",
                      "Comfy.Minimap.Visible": False, "LiteGraph.Canvas.MinFontSizeForLOD": 1,
                      "LiteGraph.Canvas.LowQualityRenderingZoomThreshold": 0.05}


def pack_files() -> list[str]:
    """The files a `git clone` of this repository holds (tracked and not-ignored new files)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=PACK_ROOT,
                            capture_output=True, check=True).stdout.decode()
    return [name for name in listed.split("\0") if name and (PACK_ROOT / name).is_file()]


def install_pack(custom_nodes: Path) -> Path:
    """Copy the repository's files into `custom_nodes/ComfyUI-Protagonist`."""
    target = custom_nodes / PACK_FOLDER
    for name in pack_files():
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PACK_ROOT / name, destination)
    return target


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """`main.py --cpu` on a loopback port; `url`, `log()` and `get_json(path)`."""

    def __init__(self, base: Path, model_files: dict[str, list[str]] | None = None):
        self.base = base
        for folder, names in (model_files or {}).items():
            for name in names:  # empty placeholders so the loaders' file lists hold the names workflows use
                path = base / "models" / folder / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
        for folder in ("custom_nodes", "input", "output", "temp", "user/default"):
            (base / folder).mkdir(parents=True, exist_ok=True)
        # a user who has seen the first-run template browser (it would cover the graph)
        (base / "user" / "default" / "comfy.settings.json").write_text(json.dumps(FRONT_END_SETTINGS))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "server.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 240.0) -> ComfyServer:
        command = [sys.executable, str(Path(COMFYUI_PATH) / "main.py"), "--cpu", "--listen", "127.0.0.1",
                   "--port", str(self.port), "--base-directory", str(self.base), "--database-url",
                   "sqlite:///:memory:", "--disable-auto-launch", "--preview-method", "none"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, cwd=self.base, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            try:
                self.get_json("/system_stats")
                return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"ComfyUI did not answer within {timeout} s:\n{self.log()[-4000:]}")

    def get_json(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
