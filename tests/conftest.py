"""Shared test setup: offline hub, importable `protagonist`, and the tiny SDXL / FLUX backends.

Nothing in the suite may reach the network: the hub is switched to offline mode before anything
imports huggingface_hub, transformers or diffusers.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


def _ensure_importable() -> None:
    """Make `import protagonist` work from a plain checkout (the repo root *is* the package)."""
    try:
        import protagonist  # noqa: F401
        return
    except ImportError:
        pass
    parent = Path(tempfile.gettempdir()) / "protagonist-test-path"
    parent.mkdir(parents=True, exist_ok=True)
    link = parent / "protagonist"
    if not link.exists():
        try:
            link.symlink_to(REPO_ROOT, target_is_directory=True)
        except FileExistsError:
            pass
    sys.path.insert(0, str(parent))
    import protagonist  # noqa: F401


_ensure_importable()

# The tiny models are far too small to gain from intra-op threads; on a shared 2-core machine the
# extra threads only spin against other processes (a 100x slow-down was measured under load).
torch.set_num_threads(int(os.environ.get("PROTAGONIST_TEST_THREADS", "1")))


def _eval_float32(backend):
    for module in backend.modules().values():
        module.eval()
    return backend.to(dtype=torch.float32)


@pytest.fixture(scope="session")
def tiny_sdxl_backend():
    from protagonist.core.tiny_models import tiny_sdxl

    return _eval_float32(tiny_sdxl(0))


@pytest.fixture(scope="session")
def tiny_flux_backend():
    from protagonist.core.tiny_models import tiny_flux

    return _eval_float32(tiny_flux(0))
