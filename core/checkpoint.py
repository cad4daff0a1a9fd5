"""Run directories: training state saved atomically as safetensors, so an interrupted job resumes.

A checkpoint is one safetensors file holding every module's weights (prefixed by the module's name)
and the optimizer's tensors, plus a JSON file naming that file, with the step and the optimizer's
scalar state. The JSON is replaced last, so a crash at any moment leaves a complete checkpoint.
Nothing is pickled.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

STATE_FILE = "checkpoint.json"


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(_unshared(tensors), str(tmp), metadata=metadata)
    os.replace(tmp, path)


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU copies where tensors share storage (tied weights such as T5's embeddings), which safetensors refuses."""
    seen, out = set(), {}
    for key, value in tensors.items():
        value = value.detach().contiguous().cpu()
        pointer = value.untyped_storage().data_ptr()
        out[key] = value.clone() if pointer in seen else value
        seen.add(pointer)
    return out


def atomic_write_json(value, path: Path) -> None:
    atomic_write_text(json.dumps(value, indent=1, sort_keys=True), path)


def atomic_write_text(text: str, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextmanager
def atomic_folder(folder: str | os.PathLike):
    """Yield a temporary sibling folder to fill; it replaces `folder` only when the block completes."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)


def _optimizer_split(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {"param_groups": state["param_groups"], "state": {}}
    for index, entries in state["state"].items():
        scalars["state"][str(index)] = {}
        for name, value in entries.items():
            if isinstance(value, torch.Tensor) and value.ndim > 0:
                tensors[f"optimizer.{index}.{name}"] = value
            else:
                scalars["state"][str(index)][name] = float(value)
    return tensors, scalars


def _optimizer_join(tensors: dict[str, torch.Tensor], scalars: dict) -> dict:
    state = {}
    for index, entries in scalars["state"].items():
        state[int(index)] = {name: torch.tensor(value) for name, value in entries.items()}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": scalars["param_groups"]}


def save_checkpoint(run_dir: str | os.PathLike, step: int, modules: dict[str, torch.nn.Module],
                    optimizer: torch.optim.Optimizer | None = None, extra: dict | None = None) -> None:
    """Write the training state of `step` and drop older checkpoints of the run."""
    run_dir = Path(run_dir)
    tensors = {f"{name}.{k}": v for name, module in modules.items() for k, v in module.state_dict().items()}
    scalars = None
    if optimizer is not None:
        opt_tensors, scalars = _optimizer_split(optimizer)
        tensors.update(opt_tensors)
    weights = f"checkpoint-{step:07d}.safetensors"
    atomic_save_tensors(tensors, run_dir / weights)
    atomic_write_json({"step": step, "weights": weights, "optimizer": scalars, "extra": extra or {}},
                      run_dir / STATE_FILE)
    for old in run_dir.glob("checkpoint-*.safetensors"):
        if old.name != weights:
            old.unlink()


def load_checkpoint(run_dir: str | os.PathLike, modules: dict[str, torch.nn.Module],
                    optimizer: torch.optim.Optimizer | None = None) -> dict | None:
    """Restore modules (and optimizer) from `run_dir`; the saved JSON state, or None if there is none."""
    run_dir = Path(run_dir)
    if not (run_dir / STATE_FILE).exists():
        return None
    state = json.loads((run_dir / STATE_FILE).read_text())
    tensors = load_file(str(run_dir / state["weights"]))
    for name, module in modules.items():
        prefix = name + "."
        module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    if optimizer is not None and state.get("optimizer"):
        opt_tensors = {k: v for k, v in tensors.items() if k.startswith("optimizer.")}
        optimizer.load_state_dict(_optimizer_join(opt_tensors, state["optimizer"]))
    return state
