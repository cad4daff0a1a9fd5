"""LoRA adapters on any denoiser module (diffusers or ComfyUI) through peft, and their export formats."""

from __future__ import annotations

import contextlib

import torch

from .interface import ProtagonistError

# Attention projections of self- and cross-attention; diffusers and ComfyUI name them alike.
ATTENTION_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
ADAPTER_NAME = "protagonist"


class LoraAdapter:
    """A peft LoRA injected into `module` in place; `remove()` restores the original layers."""

    def __init__(self, module: torch.nn.Module, rank: int = 4, alpha: float | None = None,
                 targets: tuple[str, ...] = ATTENTION_TARGETS):
        from peft import LoraConfig, inject_adapter_in_model

        if rank < 1:
            raise ProtagonistError(f"`rank` must be at least 1, got {rank}")
        self.module, self.rank, self.alpha = module, rank, float(alpha if alpha is not None else rank)
        config = LoraConfig(r=rank, lora_alpha=self.alpha, target_modules=list(targets), lora_dropout=0.0)
        inject_adapter_in_model(config, module, adapter_name=ADAPTER_NAME)
        if not self.parameters():
            raise ProtagonistError(f"no layer named like {targets} in {type(module).__name__}")

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for name, p in self.module.named_parameters() if "lora_" in name]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """peft-format weights: `<module path>.lora_A.weight` / `.lora_B.weight`."""
        from peft import get_peft_model_state_dict

        return {k: v.detach().clone() for k, v in get_peft_model_state_dict(
            self.module, adapter_name=ADAPTER_NAME).items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(self.module, state, adapter_name=ADAPTER_NAME)

    def remove(self) -> None:
        """Put every original layer back; the module is as it was before the adapter."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        for name, child in list(self.module.named_modules()):
            if isinstance(child, BaseTunerLayer) and name:
                parent_name, _, attribute = name.rpartition(".")
                parent = self.module.get_submodule(parent_name) if parent_name else self.module
                setattr(parent, attribute, child.get_base_layer())
        configs = getattr(self.module, "peft_config", None)
        if isinstance(configs, dict):
            configs.pop(ADAPTER_NAME, None)
            if not configs:
                del self.module.peft_config


def kohya_lora(state: dict[str, torch.Tensor], alpha: float, prefix: str = "lora_unet_") -> dict[str, torch.Tensor]:
    """peft LoRA weights → kohya keys (`lora_unet_<path_with_underscores>.lora_down/.lora_up/.alpha`)."""
    return _rename(state, alpha, lambda path: prefix + path.replace(".", "_"))


def comfy_lora(state: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """peft LoRA weights of a ComfyUI module → ComfyUI's generic keys (`diffusion_model.<path>.lora_up…`)."""
    return _rename(state, alpha, lambda path: "diffusion_model." + path)


def _rename(state, alpha, name_of) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        path, _, kind = key.rpartition(".lora_")
        new = name_of(path)
        out[f"{new}.lora_down.weight" if kind.startswith("A") else f"{new}.lora_up.weight"] = value
        out[f"{new}.alpha"] = torch.tensor(alpha)
    return out


@contextlib.contextmanager
def lora_applied(module: torch.nn.Module, state: dict[str, torch.Tensor], rank: int, alpha: float,
                 targets: tuple[str, ...] = ATTENTION_TARGETS):
    """Temporarily run `module` with the given LoRA merged into the weights it adapts, as ComfyUI patches a
    LoRA: sampling then costs what the base model costs (unmerged, the extra low-rank matmuls cost the
    sprite model 20 % more seconds an image). Every weight is put back bit for bit afterwards."""
    from peft.tuners.lora import LoraLayer

    adapter, originals = LoraAdapter(module, rank, alpha, targets), []
    try:
        adapter.load_state_dict(state)
        for layer in module.modules():
            if isinstance(layer, LoraLayer):
                base = layer.get_base_layer()
                originals.append((base, base.weight.detach().clone()))
                layer.merge(adapter_names=[ADAPTER_NAME])
    except BaseException:  # a failed merge leaves no layer half changed
        _restore_weights(originals)
        raise
    finally:
        adapter.remove()  # merged, the base layers take the adapter's wrappers' places
    try:
        yield
    finally:
        _restore_weights(originals)


class LoraOnNoisiest:
    """A LoRA merged into `module` (as :func:`lora_applied`) only on the sampling steps whose sigma is at least
    `sigma_floor`; below it the base weights draw. Pass :meth:`before_step` to the sampler.

    An adapter trained on the noisiest part of the schedule learns the character there; leaving the last
    steps, which it never learnt, to the base weights drew the sprite world's characters more consistently
    (bench/results/sprite_methods.md, session 29).
    """

    def __init__(self, module: torch.nn.Module, state: dict[str, torch.Tensor], rank: int, alpha: float,
                 sigma_floor: float, targets: tuple[str, ...] = ATTENTION_TARGETS):
        self.applied = lambda: lora_applied(module, state, rank, alpha, targets)
        self.sigma_floor = sigma_floor
        self._merged: contextlib.ExitStack | None = None

    def before_step(self, info) -> None:
        wanted = info.sigma >= self.sigma_floor
        if wanted and self._merged is None:
            self._merged = contextlib.ExitStack()
            self._merged.enter_context(self.applied())
        elif not wanted:
            self.close()

    def close(self) -> None:
        if self._merged is not None:
            merged, self._merged = self._merged, None
            merged.close()

    def __enter__(self) -> LoraOnNoisiest:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _restore_weights(originals: list[tuple[torch.nn.Module, torch.Tensor]]) -> None:
    with torch.no_grad():
        for layer, weight in originals:
            layer.weight.copy_(weight)


@contextlib.contextmanager
def frozen(*modules: torch.nn.Module):
    """Temporarily stop gradients into every existing parameter of `modules` (restored afterwards)."""
    with frozen_parameters([p for m in modules for p in m.parameters()]):
        yield


@contextlib.contextmanager
def frozen_parameters(parameters: list[torch.nn.Parameter]):
    saved = [(p, p.requires_grad) for p in parameters]
    for parameter, _ in saved:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in saved:
            parameter.requires_grad_(flag)
