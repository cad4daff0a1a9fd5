"""Measured memory of native two-frame sampling vs stock ComfyUI sampling of the same canvas (tiny FLUX, CPU).

A benchmark, not a check: the numbers are printed (run with ``-s``) and only their structure is asserted.
Peak memory is the resident-set peak during sampling (polled every 0.5 ms) above the resident set just
before it, after returning freed heap pages to the OS (glibc ``malloc_trim``), so it shows the memory the
sampling itself takes on top of the loaded models. Run:

    COMFYUI_PATH=/path/to/ComfyUI python -m pytest tests/comfyui/test_dsd_memory.py -s
"""

from __future__ import annotations

import ctypes
import gc
import threading
import time

import pytest
import torch

from protagonist.core.dsd.guidance import TrueCFG
from protagonist.core.tiny_models import tiny_flux

from .helpers import pack_module


class PeakResident:
    """Context manager: `delta` = peak resident bytes during the block − resident bytes at its start."""

    def __init__(self, interval: float = 0.0005):
        import psutil

        self.process, self.interval = psutil.Process(), interval
        self.base = self.peak = 0
        self._stop = threading.Event()

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self):
        gc.collect()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:  # not glibc: the baseline may include freed heap pages
            pass
        self.base = self.peak = self.process.memory_info().rss
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def delta(self) -> int:
        return self.peak - self.base


def measure_native_vs_stock(model, clip, vae, dsd: dict, side: int = 256, steps: int = 4, repeats: int = 2) -> dict:
    """Peak resident memory (bytes) and time (s) of each way of sampling a side × 2·side canvas; the table too."""
    import comfy.sample

    sampler = pack_module("nodes.dsd_sampler")
    reference = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    patched, empty = sampler.patched_flux(model, dsd, vae, reference, side)
    encode = pack_module("nodes.comfy_backend").ComfyBackend(model, clip).encode_prompts
    to_comfy = pack_module("nodes.comfy_backend").ComfyBackend(model).to_comfy
    with torch.no_grad():
        positive, negative = to_comfy(encode(["a blob at night"])), to_comfy(encode([""]))
    noise = comfy.sample.prepare_noise(empty, 0)
    runs = {
        "stock, cfg 1 (1 prediction/step)":
            lambda: comfy.sample.sample(model, noise, steps, 1.0, "euler", "simple", positive, negative, empty),
        "native two-frame, true CFG off (1 prediction/step)":
            lambda: sampler.sample_canvas(patched, positive, None, empty, 0, steps, TrueCFG()),
        "stock, cfg 2 (2 predictions/step)":
            lambda: comfy.sample.sample(model, noise, steps, 2.0, "euler", "simple", positive, negative, empty),
        "native two-frame, true CFG s_i 1.5 s_t 2 (3 predictions/step)":
            lambda: sampler.sample_canvas(patched, positive, negative, empty, 0, steps, TrueCFG(1.5, 2.0)),
    }
    results = {}
    for name, run in runs.items():
        run()  # warm-up: lazy initialisation is not sampling memory
        peaks, times = [], []
        for _ in range(repeats):
            with PeakResident() as probe:
                start = time.perf_counter()
                run()
                times.append(time.perf_counter() - start)
            peaks.append(probe.delta)
        results[name] = {"peak_bytes": max(peaks), "seconds": min(times)}
    patch = patched.model_options["transformer_options"]["patches"]["post_input"][0]
    extra = sum(p.numel() * p.element_size() for p in patch.c_embedder.parameters()) + \
        patch.tokens.numel() * patch.tokens.element_size()
    lines = [f"canvas {side}×{2 * side} px, latent {tuple(empty.shape)}, {steps} euler steps, CPU float32",
             "| sampling | peak resident above start (MB) | time (s) |", "|---|---:|---:|"]
    lines += [f"| {n} | {r['peak_bytes'] / 2**20:.1f} | {r['seconds']:.2f} |" for n, r in results.items()]
    lines.append(f"\nExtra weights held by the native patch (c_embedder + reference tokens): {extra:,} bytes")
    return {"runs": results, "extra_weight_bytes": extra, "table": "\n".join(lines)}


@pytest.fixture(scope="module")
def tiny_comfy_flux(comfy_nodes):
    from . import tiny_comfy

    ours = tiny_flux(0)
    model, clip, vae = tiny_comfy.comfy_flux_models(ours)
    layer = torch.nn.Linear(ours.image_embedder().in_features, ours.image_embedder().out_features)
    torch.nn.init.normal_(layer.weight, std=0.1, generator=torch.Generator().manual_seed(1))
    dsd = {"c_embedder": layer.state_dict(), "lora": {}, "diff": {}, "added": {}}
    return model, clip, vae, dsd


def test_memory_of_native_two_frame_vs_stock_sampling(tiny_comfy_flux):
    numbers = measure_native_vs_stock(*tiny_comfy_flux)
    print("\n" + numbers["table"])
    assert len(numbers["runs"]) == 4
    for run in numbers["runs"].values():
        assert run["peak_bytes"] >= 0 and run["seconds"] > 0
    assert numbers["extra_weight_bytes"] == (16 * 32 + 32) * 4 + (64 * 128 // 4) * 16 * 4
