"""OneActor tuning: teach the projector to turn a proposal's features into its word offset.

Each step's batch is the target, `aux_per_batch` auxiliary proposals, and the "average" sample (the
target image with the mean offset of the batch's auxiliaries); the loss is
L_tar + λ1·L_aux + λ2·L_aver (paper: λ1 = 0.5, λ2 = 0.3). Only the projector learns. As in the paper, the
target comes as an augmented set: the image and its mirror image (the paper also crops faces, which has no
counterpart for characters that are not people); each step draws one of them.
"""

from __future__ import annotations

import copy
import logging
import re
from dataclasses import dataclass, field

import torch

from ..adapters import frozen
from ..interface import (
    DiffusionBackend,
    ProtagonistError,
    WordOffset,
    apply_word_offset,
    concat_conditionings,
)
from ..training import adamw, check_noisiest_share, draw_noise, error_at, optimisation_step, per_sample
from .projector import Projector

log = logging.getLogger(__name__)

DEFAULT_TEMPLATES = ("a photo of a {}", "a portrait of a {}", "a picture of a {}", "an image of a {}",
                     "a close-up photo of a {}", "a rendering of a {}", "a {}")


@dataclass
class OneActorTuning:
    steps: int = 200
    aux_per_batch: int = 3
    lr: float = 1e-4
    weight_decay: float = 1e-2
    lambda_aux: float = 0.5
    lambda_aver: float = 0.3
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    seed: int = 0
    # 1.0: noise levels as the model was trained (the paper). Less: only the noisiest part of the
    # schedule, where the character is settled (see bench/results/sprite_methods.md for the measurement).
    noisiest_share: float = 1.0
    # The paper's augmented target set (its flip): the offset then has to hold in both orientations, so it
    # cannot carry what is particular to one image as easily (the tuned offset overfits the target:
    # bench/results/sprite_methods.md, session 11).
    mirror_target: bool = True


_MIRRORED = {"left": "right", "right": "left"}


def mirrored_text(text: str) -> str:
    """A caption as it reads for the mirror image: the words "left" and "right" swapped."""
    return re.sub(r"\b(left|right)\b", lambda found: _MIRRORED[found.group(1)], text)


@dataclass
class ProposalSet:
    """One target and its auxiliaries: latents [N, C, h, w] and features [N, …]; index 0 is the target.

    `scenes`, one per proposal ("on a beach, on the left"; "" for none), are the scenes the proposals were
    prompted with; the tuning captions end with them, so that the offset need not learn the background.
    """

    latents: torch.Tensor
    features: torch.Tensor
    image_size: tuple[int, int]
    scenes: list[str] | None = None
    # Rows of `latents` after the proposals: further views of the target (its mirror image, other images of its
    # character). They have no features: the offset always comes from the target's.
    target_views: int = 0

    @property
    def proposals(self) -> int:
        return self.latents.shape[0] - self.target_views

    @classmethod
    def from_proposals(cls, proposals, target: int, image_size: tuple[int, int],
                       scenes: list[str] | None = None) -> "ProposalSet":
        count = proposals.latents.shape[0]
        if not 0 <= target < count:
            raise ProtagonistError(f"target index {target} is out of range: there are {count} proposals (0–{count - 1})")
        if proposals.features is None:
            raise ProtagonistError("the proposals carry no features: sample them with feature capture on")
        if scenes is not None and len(scenes) != count:
            raise ProtagonistError(f"got {len(scenes)} scenes for {count} proposals: give one per proposal")
        order = [target] + [i for i in range(count) if i != target]
        return cls(proposals.latents[order], proposals.features[order], image_size,
                   None if scenes is None else [scenes[i] for i in order])

    def captions(self, template: str, base_word: str) -> list[str]:
        """Every proposal's caption from `template`, ending with its scene when it has one."""
        caption = template.format(base_word)
        return [f"{caption} {scene}" if scene else caption for scene in (self.scenes or [""] * len(self.latents))]

    def with_target_views(self, latents: torch.Tensor, scenes: list[str] | None = None) -> "ProposalSet":
        """The set with `latents` [V, C, h, w] appended as further views of the target, each captioned with its
        scene in `scenes` (default: the target's)."""
        if latents.shape[1:] != self.latents.shape[1:]:
            raise ProtagonistError(f"target views of shape {tuple(latents.shape[1:])} do not match the proposals' "
                                   f"latents {tuple(self.latents.shape[1:])}: draw them at the proposals' size")
        if scenes is not None and len(scenes) != latents.shape[0]:
            raise ProtagonistError(f"got {len(scenes)} scenes for {latents.shape[0]} target views: give one per view")
        if self.scenes is not None:
            scenes = [*self.scenes, *(scenes or [self.scenes[0]] * latents.shape[0])]
        return ProposalSet(torch.cat([self.latents, latents.to(self.latents)]), self.features, self.image_size,
                           scenes, self.target_views + latents.shape[0])

    def with_mirrored_target(self, backend: DiffusionBackend) -> "ProposalSet":
        """The set with the target's mirror image appended as a further view (its scene mirrored too). The mirror
        is drawn through the VAE: decoded, flipped, encoded."""
        with torch.no_grad():
            image = backend.decode_latents(self.latents[:1].to(backend.device, backend.dtype))
            mirror = backend.encode_images(image.flip(-1))
        scenes = None if self.scenes is None else [mirrored_text(self.scenes[0])]
        return self.with_target_views(mirror, scenes)


@dataclass
class TunedProjector:
    projector: Projector
    losses: list[float] = field(default_factory=list)


def new_projector(backend: DiffusionBackend, features: torch.Tensor, seed: int) -> Projector:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        width = backend.encode_prompts([""]).embeds.shape[-1]
        return Projector(*features.shape[1:], width)


def tune_projector(backend: DiffusionBackend, data: ProposalSet, base_word: str, settings: OneActorTuning,
                   callback=None, projector: Projector | None = None) -> TunedProjector:
    """`projector`: continue this one (a copy) instead of tuning a new one."""
    return tune_projectors(backend, [data], base_word, settings, callback,
                           None if projector is None else [projector])[0]


@dataclass
class _Tuning:
    """One projector's tuning state: its proposal set (with the target's views), captions, generator, losses."""
    data: ProposalSet
    template_conds: list
    projector: Projector
    generator: torch.Generator
    losses: list[float] = field(default_factory=list)

    @property
    def proposals(self) -> int:
        return self.data.proposals

    @property
    def views(self) -> int:
        """The target's views: the image itself and those `data` appends after the proposals."""
        return 1 + self.data.target_views


def tune_projectors(backend: DiffusionBackend, sets: list[ProposalSet], base_word: str, settings: OneActorTuning,
                    callback=None, projectors: list[Projector] | None = None) -> list[TunedProjector]:
    """One projector per proposal set (e.g. one per candidate target), tuned side by side.

    Each projector sees only its own loss and draws from its own generator, seeded alike, so each tuning
    is `tune_projector` on its set alone; only the denoiser's batch is shared, which on a small model costs
    far less than one batch per set (bench/results/sprite_methods.md, session 18). `callback(step, loss)`
    gets the sum of the sets' losses. `projectors`, one per set: tune copies of these (e.g. already tuned
    ones) instead of new projectors.
    """
    if not sets:
        raise ProtagonistError("no proposal sets to tune: give at least one target")
    if any(data.proposals < 2 for data in sets):
        raise ProtagonistError("OneActor needs the target and at least one auxiliary proposal")
    check_noisiest_share(settings.noisiest_share)
    encoded = {}  # the candidates share most captions: each is encoded once
    if projectors is not None and len(projectors) != len(sets):
        raise ProtagonistError(f"got {len(projectors)} projectors for {len(sets)} proposal sets: give one per set")
    starts = projectors or [None] * len(sets)
    tunings = [_new_tuning(backend, data, base_word, settings, encoded, start) for data, start in zip(sets, starts)]
    # One AdamW over every projector: its update is elementwise, so each projector steps as with its own.
    optimizer = adamw([p for t in tunings for p in t.projector.parameters()], backend.device, lr=settings.lr,
                      weight_decay=settings.weight_decay)
    spans = len(tunings[0].template_conds[0][0].word_positions[0])
    if spans > 1:
        log.info("the base word %r is %d tokens; the offset applies to all of them", base_word, spans)
    frozen_modules = [backend.denoiser, *backend.embedding_tables().values()]
    with torch.enable_grad(), backend.session(), frozen(*frozen_modules):
        for step in range(settings.steps):
            losses = _step_losses(backend, tunings, base_word, settings)
            total = optimisation_step(torch.stack(losses).sum(), optimizer, step)
            for tuning, loss in zip(tunings, losses):
                tuning.losses.append(loss.item())
            if callback is not None:
                callback(step, total)
    for tuning in tunings:
        tuning.projector.eval()
    return [TunedProjector(tuning.projector, tuning.losses) for tuning in tunings]


def _new_tuning(backend, data: ProposalSet, base_word: str, settings: OneActorTuning, encoded: dict,
                start: Projector | None = None) -> _Tuning:
    if start is None:
        projector = new_projector(backend, data.features, settings.seed)
    else:
        projector = copy.deepcopy(start)  # the caller's projector (a kept identity's) stays as it was
    data = data.with_mirrored_target(backend) if settings.mirror_target else data
    projector.to(backend.device).train()
    return _Tuning(data, _encoded_captions(backend, data, settings.templates, base_word, encoded),
                   projector, torch.Generator().manual_seed(settings.seed))


def _encoded_captions(backend, data: ProposalSet, templates, base_word: str, encoded: dict) -> list[list]:
    """[template][proposal] conditionings; each distinct caption is encoded once into `encoded` (without
    scenes, one per template)."""
    with torch.no_grad():
        for caption in dict.fromkeys(c for t in templates for c in data.captions(t, base_word)):
            if caption not in encoded:
                encoded[caption] = backend.encode_prompts([caption], word=base_word, image_size=data.image_size)
    return [[encoded[c] for c in data.captions(t, base_word)] for t in templates]


def _step_losses(backend, tunings: list[_Tuning], base_word: str, settings: OneActorTuning) -> list[torch.Tensor]:
    """Each tuning's step loss, from one denoiser evaluation of all their batches."""
    batches = [_step_batch(backend, tuning, base_word, settings) for tuning in tunings]
    draws = [draw_noise(backend, latents, tuning.generator, settings.noisiest_share)
             for (latents, _, _), tuning in zip(batches, tunings)]
    latents, conds, weights = zip(*batches)
    sigma, noise = (torch.cat(parts) for parts in zip(*draws))
    errors = per_sample(error_at(backend, torch.cat(latents), concat_conditionings(list(conds)), sigma, noise))
    return [(w.to(e) * e).sum() for w, e in zip(weights, errors.split([len(w) for w in weights]))]


def _step_batch(backend, tuning: _Tuning, base_word: str, settings: OneActorTuning):
    """This step's latents, offset conditionings and loss weights of one tuning. `tuning.data` holds the
    `proposals` (target first), then the target's other views (its mirror image, other images of it)."""
    data, generator = tuning.data, tuning.generator
    aux_count = min(settings.aux_per_batch, tuning.proposals - 1)
    aux = 1 + torch.randperm(tuning.proposals - 1, generator=generator)[:aux_count]
    picked = torch.cat([torch.zeros(1, dtype=torch.long), aux])
    # The projector always sees the whole batch (its BatchNorm statistics are the paper's); the denoiser
    # only sees the rows whose loss weight is not zero, so λ1 = λ2 = 0 costs one evaluation a step, not 2 + K.
    offsets = tuning.projector(data.features[picked].to(backend.device))  # [1 + K, width]
    offsets = torch.cat([offsets, offsets[1:].mean(dim=0, keepdim=True)])  # + the average condition
    target = _target_view(tuning.proposals, tuning.views, generator)
    images = torch.cat([torch.tensor([target]), aux, torch.tensor([target])])
    weights = loss_weights(settings, aux_count)
    live = weights != 0
    latents = data.latents[images[live]].to(backend.device)
    choice = torch.randint(0, len(tuning.template_conds), (latents.shape[0],), generator=generator).tolist()
    cond = concat_conditionings([tuning.template_conds[c][i] for c, i in zip(choice, images[live].tolist())])
    return latents, apply_word_offset(cond, WordOffset(base_word, offsets[live])), weights[live]


def _target_view(proposals: int, views: int, generator: torch.Generator) -> int:
    """Row of this step's target view: 0 (the image) or one of the rows after the proposals."""
    if views == 1:
        return 0  # draws nothing, so tuning without views repeats earlier runs exactly
    view = int(torch.randint(views, (1,), generator=generator))
    return 0 if view == 0 else proposals + view - 1


def loss_weights(settings: OneActorTuning, aux_count: int) -> torch.Tensor:
    """Per-row weights of [target, aux…, average]: L_tar + λ1·mean(L_aux) + λ2·L_aver."""
    return torch.tensor([1.0] + [settings.lambda_aux / aux_count] * aux_count + [settings.lambda_aver])
