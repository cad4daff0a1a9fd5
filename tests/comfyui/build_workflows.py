"""Rebuild `workflows/*.json`, their `.jpg` thumbnails, `workflows/poses/*.png` and `icon.png`.

    COMFYUI_PATH=~/ComfyUI ~/comfy-venv/bin/python -m tests.comfyui.build_workflows

Needs Playwright and a system Chromium (see the README). Starts ComfyUI in a temporary base directory,
builds every graph of `workflow_specs.py` with the front end's own node classes (so widget order and
format are exactly what the front end saves), and writes the files. Development tool: nothing imports it.
"""

from __future__ import annotations

import io
import json
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

from .browser import BUILD_JS, LOAD_JS, comfy_page
from .conftest import PACK_ROOT
from .live_server import ComfyServer, install_pack
from .workflow_specs import INPUT_FILES, MODEL_FILES, POSE_IMAGES, WORKFLOWS

WORKFLOWS_DIR = PACK_ROOT / "workflows"
THUMBNAIL_WIDTH, THUMBNAIL_MAX_BYTES = 512, 60_000

# OpenPose's 18 body keypoints (COCO order) and its limb colours, as ControlNet OpenPose models expect.
LIMBS = [(1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
         (1, 0), (0, 14), (14, 16), (0, 15), (15, 17)]
COLOURS = [(255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
           (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
           (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85)]
_HEAD = [(0.50, 0.16), (0.50, 0.26)]
_FACE = [(0.48, 0.14), (0.52, 0.14), (0.46, 0.15), (0.54, 0.15)]
POSES = {  # nose, neck, right arm ×3, left arm ×3, right leg ×3, left leg ×3, eyes, ears (x, y in [0, 1])
    "standing": _HEAD + [(0.41, 0.27), (0.38, 0.41), (0.37, 0.54), (0.59, 0.27), (0.62, 0.41), (0.63, 0.54),
                         (0.45, 0.54), (0.45, 0.72), (0.45, 0.90), (0.55, 0.54), (0.55, 0.72), (0.55, 0.90)] + _FACE,
    "walking": _HEAD + [(0.41, 0.27), (0.36, 0.39), (0.33, 0.50), (0.59, 0.27), (0.63, 0.40), (0.68, 0.50),
                        (0.46, 0.54), (0.40, 0.71), (0.34, 0.88), (0.54, 0.54), (0.58, 0.71), (0.62, 0.89)] + _FACE,
    "waving": _HEAD + [(0.41, 0.27), (0.33, 0.20), (0.31, 0.08), (0.59, 0.27), (0.62, 0.41), (0.63, 0.54),
                       (0.45, 0.54), (0.45, 0.72), (0.45, 0.90), (0.55, 0.54), (0.55, 0.72), (0.55, 0.90)] + _FACE,
    "sitting": _HEAD + [(0.41, 0.27), (0.38, 0.40), (0.44, 0.50), (0.59, 0.27), (0.62, 0.40), (0.56, 0.50),
                        (0.45, 0.55), (0.36, 0.62), (0.36, 0.84), (0.55, 0.55), (0.46, 0.63), (0.46, 0.85)] + _FACE,
}


def openpose_image(points: list[tuple[float, float]], size: int = 512) -> Image.Image:
    """An OpenPose skeleton on black: limbs at 60 % colour, keypoints as dots."""
    image = Image.new("RGB", (size, size), "black")
    draw = ImageDraw.Draw(image)
    xy = [(x * size, y * size) for x, y in points]
    for index, (a, b) in enumerate(LIMBS):
        colour = tuple(int(c * 0.6) for c in COLOURS[index])
        draw.line([xy[a], xy[b]], fill=colour, width=max(size // 64, 2))
    radius = max(size // 128, 2)
    for index, (x, y) in enumerate(xy):
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=COLOURS[index])
    return image


def write_poses(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, points in zip(POSE_IMAGES, POSES.values()):
        paths.append(folder / name)
        openpose_image(points).save(paths[-1], optimize=True)
    return paths


def write_icon(poses: list[Path], path: Path, size: int = 256) -> None:
    """The pack's icon: the four storyboard poses on one page."""
    icon = Image.new("RGB", (size, size), (24, 24, 28))
    half = size // 2
    for index, pose in enumerate(poses[:4]):
        with Image.open(pose) as image:
            panel = image.convert("RGB").resize((half - 6, half - 6), Image.LANCZOS)
        icon.paste(panel, ((index % 2) * half + 3, (index // 2) * half + 3))
    icon.save(path, optimize=True)


def thumbnail(png: bytes) -> bytes:
    image = Image.open(io.BytesIO(png)).convert("RGB")
    image = image.resize((THUMBNAIL_WIDTH, round(image.height * THUMBNAIL_WIDTH / image.width)), Image.LANCZOS)
    for quality in (80, 70, 60, 50, 40):
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality, optimize=True)
        if buffer.tell() <= THUMBNAIL_MAX_BYTES:
            break
    return buffer.getvalue()


def main(names: list[str]) -> None:
    poses = write_poses(WORKFLOWS_DIR / "poses")
    write_icon(poses, PACK_ROOT / "icon.png")
    with tempfile.TemporaryDirectory(prefix="protagonist-build-") as tmp:
        server = ComfyServer(Path(tmp), MODEL_FILES)
        install_pack(server.base / "custom_nodes")
        for name in INPUT_FILES:
            Image.new("RGB", (64, 64), "gray").save(server.base / "input" / name)
        for pose in poses:
            (server.base / "input" / pose.name).write_bytes(pose.read_bytes())
        server.start()
        try:
            with comfy_page(server.url) as page:
                for name in names or list(WORKFLOWS):
                    graph = json.loads(page.evaluate(BUILD_JS, WORKFLOWS[name]().to_json()))
                    path = WORKFLOWS_DIR / f"{name}.json"
                    path.write_text(json.dumps(graph, indent=2, ensure_ascii=False) + "\n")
                    page.evaluate(LOAD_JS, graph)
                    shot = page.locator("#graph-canvas").screenshot()
                    path.with_suffix(".jpg").write_bytes(thumbnail(shot))
                    print(f"wrote {path} ({len(graph['nodes'])} nodes)")
        finally:
            server.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
