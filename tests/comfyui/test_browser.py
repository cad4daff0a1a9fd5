"""The shipped workflows in ComfyUI's real web front end, in headless Chromium.

Starts ComfyUI's server (with only this pack, copied as `git clone` would give it, and empty model
files under the names the workflows use), loads every workflow with `app.loadGraphData`, and checks
that no node type is missing, no widget value is invalid, every link joins matching types, and the
front end's own `graphToPrompt()` gives exactly the API twin the workflow tests execute. Screenshots
go to `out/screenshots/<workflow>.png`.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from .browser import INSPECT_JS, LOAD_JS, PROMPT_JS, chromium_path, comfy_page
from .conftest import PACK_ROOT
from .live_server import ComfyServer, install_pack
from .workflow_api import DISPLAY_INPUTS, load_workflow, ui_to_api, workflow_names
from .workflow_specs import INPUT_FILES, MODEL_FILES

SCREENSHOTS = PACK_ROOT / "out" / "screenshots"


def _playwright_missing() -> bool:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return True
    return False


pytestmark = [
    pytest.mark.skipif(chromium_path() is None, reason="no Chromium: apt-get install chromium chromium-driver"),
    pytest.mark.skipif(_playwright_missing(), reason="Playwright is not installed: pip install playwright "
                                                      "(the system Chromium is used; no browser download)"),
]


@pytest.fixture(scope="module")
def page():
    from PIL import Image

    with tempfile.TemporaryDirectory(prefix="protagonist-browser-") as tmp:
        server = ComfyServer(Path(tmp), MODEL_FILES)
        install_pack(server.base / "custom_nodes")
        for name in INPUT_FILES:
            Image.new("RGB", (64, 64), "gray").save(server.base / "input" / name)
        for pose in (PACK_ROOT / "workflows" / "poses").glob("*.png"):
            (server.base / "input" / pose.name).write_bytes(pose.read_bytes())
        server.start()
        try:
            with comfy_page(server.url) as page:
                yield page
        finally:
            server.stop()


@pytest.mark.parametrize("name", workflow_names())
def test_workflow_loads_in_the_browser(page, comfy_nodes, name):
    workflow = load_workflow(name)
    page.evaluate(LOAD_JS, workflow)
    report = page.evaluate(INSPECT_JS)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.locator("#graph-canvas").screenshot(path=str(SCREENSHOTS / f"{name}.png"))
    assert report["nodes"] == len(workflow["nodes"])
    assert not report["missing"] and not report["errors"], report
    assert not report["invalid"], report
    assert not report["badLinks"], report
    assert not report["alerts"] and not report["dialogs"], report
    assert not page.page_errors, page.page_errors  # raised while loading this workflow

    front_end = {k: {"class_type": v["class_type"],
                     "inputs": {i: x for i, x in v["inputs"].items() if i not in DISPLAY_INPUTS.get(v["class_type"], ())}}
                 for k, v in page.evaluate(PROMPT_JS).items()}
    ours = ui_to_api(workflow, comfy_nodes.NODE_CLASS_MAPPINGS)
    assert json.loads(json.dumps(ours)) == front_end


def test_a_missing_node_is_reported(page):
    """The check above can fail: a workflow with an unknown node type is reported as missing."""
    workflow = load_workflow("dsd_two_frame_generation")
    workflow["nodes"][1]["type"] = "Protagonist_NoSuchNode"
    page.evaluate(LOAD_JS, workflow)
    report = page.evaluate(INSPECT_JS)
    assert "Protagonist_NoSuchNode" in report["missing"]


def test_an_invalid_workflow_is_reported(page):
    """A workflow the front end's schema rejects raises an alert, which the check above would see."""
    workflow = load_workflow("dsd_two_frame_generation")
    workflow["links"] = None
    page.evaluate(LOAD_JS, workflow)
    assert page.evaluate(INSPECT_JS)["alerts"]
