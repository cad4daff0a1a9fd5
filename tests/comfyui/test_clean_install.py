"""A clean ComfyUI with only this pack (as `git clone` + `pip install -r requirements.txt` give it) starts cleanly."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest

from .conftest import PACK_ROOT
from .live_server import PACK_FOLDER, ComfyServer, install_pack
from .workflow_api import workflow_names


@pytest.fixture(scope="module")
def clean_server():
    with tempfile.TemporaryDirectory(prefix="protagonist-clean-") as tmp:
        server = ComfyServer(Path(tmp))
        pack = install_pack(server.base / "custom_nodes")
        # every requirement is already satisfied in ComfyUI's environment: --no-index proves nothing is fetched
        pip = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "-r", str(pack / "requirements.txt")],
                             capture_output=True, text=True, check=False)
        assert pip.returncode == 0, pip.stdout + pip.stderr
        server.start()
        try:
            yield server, pack
        finally:
            server.stop()


def test_the_pack_imports_without_errors(clean_server):
    server, pack = clean_server
    log = server.log()
    ours = [line for line in log.splitlines() if str(pack) in line]
    assert ours and all("IMPORT FAILED" not in line and "Cannot import" not in line for line in ours), ours
    import_lines = [line for line in ours if "seconds" in line]
    assert len(import_lines) == 1, ours  # listed once among the custom nodes' import times, without failure
    info = server.get_json("/object_info")
    ours = sorted(name for name in info if name.startswith("Protagonist_"))
    assert len(ours) >= 14 and all(info[name]["python_module"].endswith(PACK_FOLDER) for name in ours)


def test_the_workflows_are_listed_as_templates(clean_server):
    server, _ = clean_server
    templates = server.get_json("/workflow_templates")
    assert sorted(templates.get(PACK_FOLDER, [])) == workflow_names()
    for name in workflow_names():
        for suffix in (".json", ".jpg"):
            url = f"{server.url}/api/workflow_templates/{PACK_FOLDER}/{name}{suffix}"
            with urllib.request.urlopen(url, timeout=30) as response:
                assert response.status == 200 and response.read()


def test_pyproject_is_registry_ready():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((PACK_ROOT / "pyproject.toml").read_text())
    comfy = project["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"]
    assert comfy["Icon"].startswith("https://") and (PACK_ROOT / comfy["Icon"].rsplit("/", 1)[1]).is_file()
    assert project["project"]["urls"]["Repository"].startswith("https://")
    requirements = [line.strip() for line in (PACK_ROOT / "requirements.txt").read_text().splitlines()
                    if line.strip() and not line.startswith("#")]
    for requirement in project["project"]["dependencies"] + requirements:
        assert "==" not in requirement and "~=" not in requirement and ">=" in requirement, requirement
