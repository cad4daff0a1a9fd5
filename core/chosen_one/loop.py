"""The Chosen One loop: proposals → embeddings → most cohesive cluster → LoRA + token → repeat.

Every round is persisted to `run_dir/round_NN/` (proposals, embeddings, chosen cluster, identity,
metrics); `round.json` is written last, so a run interrupted at any point resumes after its last
complete round and, for the same seed, ends exactly where an uninterrupted run ends. `settings.json`
records what shaped the rounds, so that a run folder is never resumed with other settings.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..adapters import LoraOnNoisiest, lora_applied
from ..checkpoint import atomic_save_tensors, atomic_write_json
from ..interface import DiffusionBackend, ProtagonistError
from ..proposals import ProposalSettings, generate_proposals, scene_prompts, scenes_for
from ..training import TrainingDiverged, lowest_sigma_of_noisiest
from .clustering import check_cluster_settings, mean_pairwise_distance, most_cohesive_cluster
from .identity_file import load_identity, save_identity
from .training import IdentityTraining, LearnedIdentity, new_token, train_identity

log = logging.getLogger(__name__)


@dataclass
class ChosenOneSettings:
    prompt: str
    init_word: str
    token_name: str = "<protagonist>"
    identity_prompt: str = "a photo of {}"  # proposals of later rounds: "{}" becomes the token
    negative: str = ""
    proposals: ProposalSettings = field(default_factory=ProposalSettings)
    clusters: int = 6
    min_cluster_size: int = 11
    metric: str = "euclidean"
    # Above 1, the chosen cluster also takes in the images of other clusters within this multiple of its radius,
    # from round 1 on: proposals of a learned identity mostly show one character, which K-MEANS splits.
    cluster_expansion: float = 1.0
    training: IdentityTraining = field(default_factory=IdentityTraining)
    max_rounds: int = 5
    convergence_ratio: float = 0.7  # stop when the spread falls below this share of round 0's
    convergence_threshold: float | None = None  # an absolute threshold instead, when set
    warm_start: bool = False  # continue from the previous round's identity instead of the base model
    # Scenes ("on a beach") that proposal i ends with (i modulo their number) and that its training captions
    # repeat: the cohesive cluster then agrees on the character, not on a background the token would absorb.
    # Empty: the published recipe, one prompt for every proposal.
    scenes: tuple[str, ...] = ()
    # Return the round whose identity drew the least spread proposals (the loop's own convergence measure)
    # rather than the last: training on its own proposals can make an identity worse again. Off: the paper's.
    keep_tightest: bool = False
    # How the learned identity draws once the loop is done (the benchmark, the loop node's hooks): its LoRA on
    # this share of the noise levels, noisiest first, and the base weights below. An adapter trained on the
    # noisiest levels alone drew less consistently on the last steps, which it never learnt. The loop's own
    # proposals keep the LoRA on every step: there it changed little and did not help (bench/results, session 29).
    # 1: every step (the paper's).
    lora_noisiest_share: float = 1.0
    # After the round limit the loop draws one more set of proposals only to measure the last identity's spread
    # (for `keep_tightest` and the summary): this many (None: `proposals.count`). The mean pairwise distance of a
    # smaller set estimates the same spread, for fewer evaluations.
    last_check_count: int | None = None
    # ... and when that estimate lies within this share of the spread an earlier identity drew (keep_tightest's
    # competitor), the rest of the `proposals.count` are drawn too and decide: the full check's choice, where it is
    # close, for the smaller check's cost where it is not. None: the smaller check alone decides.
    last_check_margin: float | None = None
    # Training steps of round 0 alone (None: `training.steps`): its cluster, of the base model's proposals, mixes
    # characters, and its identity need only steer the next proposals towards them.
    first_round_training_steps: int | None = None


@dataclass
class RoundResult:
    index: int
    spread: float  # mean pairwise embedding distance of this round's proposals
    chosen: list[int]
    sizes: list[int]
    final_loss: float | None


@dataclass
class ChosenOneResult:
    identity: LearnedIdentity | None
    rounds: list[RoundResult]
    converged: bool
    kept_round: int | None = None  # whose identity this is


Embedder = Callable[[torch.Tensor], torch.Tensor]


def _round_dir(run_dir: Path, index: int) -> Path:
    return run_dir / f"round_{index:02d}"


def _completed_rounds(run_dir: Path) -> list[RoundResult]:
    rounds = []
    while (_round_dir(run_dir, len(rounds)) / "round.json").exists():
        rounds.append(RoundResult(**json.loads((_round_dir(run_dir, len(rounds)) / "round.json").read_text())))
    return rounds


def _proposal_count(settings: ChosenOneSettings, index: int) -> int:
    if index == settings.max_rounds and settings.last_check_count is not None:
        return settings.last_check_count
    return settings.proposals.count


def _training_steps(settings: ChosenOneSettings, index: int) -> int:
    if index == 0 and settings.first_round_training_steps is not None:
        return settings.first_round_training_steps
    return settings.training.steps


def _most_proposals(settings: ChosenOneSettings, index: int) -> int:
    """Round `index`'s proposals at most: the check after the last round may draw the rest of a full set."""
    return settings.proposals.count if settings.last_check_margin is not None else _proposal_count(settings, index)


def proposal_batches(settings: ChosenOneSettings) -> int:
    """Sampling runs of a loop that goes to its round limit (for progress bars)."""
    return sum(-(-_most_proposals(settings, index) // settings.proposals.batch_size)
               for index in range(settings.max_rounds + 1))


def worst_case_evaluations(settings: ChosenOneSettings) -> int:
    """Denoiser evaluations of a loop that runs to its round limit: every round's proposals (conditional and
    unconditional pass on each guided step) and every training step's batch."""
    proposals = sum(_most_proposals(settings, index) for index in range(settings.max_rounds + 1))
    steps = sum(_training_steps(settings, index) for index in range(settings.max_rounds))
    training = steps * settings.training.batch_size
    return proposals * settings.proposals.evaluations_per_image() + training


def identity_on_noisiest(backend: DiffusionBackend, identity: LearnedIdentity, share: float) -> LoraOnNoisiest:
    """`identity`'s LoRA merged on the steps within the noisiest `share` of the schedule's levels (1: every step,
    whatever schedule the sampler uses)."""
    floor = 0.0 if share >= 1.0 else lowest_sigma_of_noisiest(backend.schedule, share)
    return LoraOnNoisiest(backend.denoiser, identity.lora, identity.rank, identity.alpha, floor)


def _propose(backend, settings: ChosenOneSettings, identity, index: int, callback, first: int = 0,
             count: int | None = None):
    """Round `index`'s proposals `first` to `first + count` (each from its own seed and scene)."""
    count = _proposal_count(settings, index) if count is None else count
    proposal = ProposalSettings(**{**asdict(settings.proposals), "count": count,
                                   "seed": settings.proposals.seed + index * settings.proposals.count + first})
    prompt = settings.prompt if identity is None else settings.identity_prompt.format(identity.token.name)
    prompts = scene_prompts(prompt, settings.scenes, count, first)
    if identity is None:
        return generate_proposals(backend, prompts, settings.negative, proposal, callback=callback)
    with lora_applied(backend.denoiser, identity.lora, identity.rank, identity.alpha):
        return generate_proposals(backend, prompts, settings.negative, proposal, tokens=[identity.token],
                                  callback=callback)


def _train(backend, settings: ChosenOneSettings, images, scenes, previous: LearnedIdentity | None, index: int,
           callback=None):
    """A fresh identity from the base model, or (warm start) one that continues the previous round's."""
    token = new_token(backend, settings.token_name, settings.init_word)
    training = IdentityTraining(**{**asdict(settings.training), "seed": settings.training.seed + index,
                                   "steps": _training_steps(settings, index)})
    initial_lora = None
    if settings.warm_start and previous is not None:
        token.vectors = {k: v.clone().requires_grad_(True) for k, v in previous.token.vectors.items()}
        initial_lora = previous.lora
    return train_identity(backend, images, token, training, callback=callback, initial_lora=initial_lora,
                          scenes=scenes)


def _save_round(directory: Path, proposals, embeddings, choice, identity, spread, family, init_word) -> RoundResult:
    atomic_save_tensors({"images": proposals.images, "embeddings": embeddings,
                         "seeds": torch.tensor(proposals.seeds)}, directory / "proposals.safetensors")
    atomic_write_json({"sizes": choice.sizes, "cohesion": choice.cohesion, "chosen": choice.chosen,
                       "indices": choice.indices, "added": choice.added, "labels": choice.labels},
                      directory / "cluster.json")
    save_identity(identity, directory / "identity.safetensors", family, init_word)
    result = RoundResult(int(directory.name[-2:]), spread, choice.indices, choice.sizes, identity.losses[-1])
    atomic_write_json(asdict(result), directory / "round.json")
    return result


# Settings a resumed run may change: they decide when the loop stops, which round it returns and how that round's
# identity draws, or how many proposals share a batch (each image has its own seed), not what the rounds hold.
RESUMABLE_CHANGES = frozenset({"max_rounds", "convergence_ratio", "convergence_threshold", "keep_tightest",
                               "lora_noisiest_share", "last_check_count", "last_check_margin",
                               "proposals.batch_size"})
# Settings added after run folders were already being made, with the value that gave the behaviour before them.
LATER_SETTINGS = {"proposals.cfg_end": 1.0, "first_round_training_steps": None}


def _round_settings(settings: ChosenOneSettings) -> dict:
    """The settings that shape every round, flattened to dotted names, as JSON gives them back."""
    flat = {}
    for key, value in asdict(settings).items():
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for sub, inner in items:
            name = key if sub is None else f"{key}.{sub}"
            if name not in RESUMABLE_CHANGES:
                flat[name] = inner
    return json.loads(json.dumps(flat))


def _check_same_run(run_dir: Path, settings: ChosenOneSettings) -> None:
    """Record the run's settings, or refuse to resume rounds that other settings made."""
    current, path = _round_settings(settings), run_dir / "settings.json"
    if not path.exists():
        atomic_write_json(current, path)
        return
    # a setting a resumed run may change is not compared, even where an older folder recorded it
    recorded = {**LATER_SETTINGS, **json.loads(path.read_text())}
    saved = {k: v for k, v in recorded.items() if k not in RESUMABLE_CHANGES}
    changed = [f"{k}: {saved.get(k)!r} → {current.get(k)!r}" for k in sorted(current.keys() | saved.keys())
               if saved.get(k) != current.get(k)]
    if changed:
        raise ProtagonistError(f"{run_dir} holds rounds made with other settings ({'; '.join(changed)}); give the "
                               "run another name to start a new one, or put the settings back to resume it")


def _threshold(settings: ChosenOneSettings, first_spread: float) -> float:
    if settings.convergence_threshold is not None:
        return settings.convergence_threshold
    return settings.convergence_ratio * first_spread


def _check_settings(settings: ChosenOneSettings) -> None:
    check_cluster_settings(settings.proposals.count, settings.clusters, settings.min_cluster_size)
    if not 0.0 < settings.lora_noisiest_share <= 1.0:
        raise ProtagonistError("`lora_noisiest_share` is the share of the noise levels, noisiest first, on which the "
                               f"learned LoRA draws: from above 0 to 1 (every step); got "
                               f"{settings.lora_noisiest_share}")
    if settings.last_check_count is not None and settings.last_check_count < 2:
        raise ProtagonistError("`last_check_count` proposals measure the last identity's spread, a mean distance "
                               f"between pairs: give at least 2 (or none for `proposals.count`); got "
                               f"{settings.last_check_count}")
    if settings.last_check_margin is not None and settings.last_check_margin < 0:
        raise ProtagonistError("`last_check_margin` is a share of an earlier identity's spread, 0 or more (or none "
                               f"to let the smaller check decide alone); got {settings.last_check_margin}")


def run_chosen_one(backend: DiffusionBackend, settings: ChosenOneSettings, embed: Embedder,
                   run_dir: str | Path, callback=None, sample_callback=None, train_callback=None) -> ChosenOneResult:
    """Run (or resume) the loop in `run_dir`.

    `callback(round, stage, images)` is called after each round's proposals; `sample_callback` after
    every sampling step and `train_callback(step, loss)` after every training step (any may raise to
    interrupt: completed rounds stay on disk).
    """
    _check_settings(settings)
    new_token(backend, settings.token_name, settings.init_word)  # fail early on a bad initialiser
    run_dir = Path(run_dir)
    _check_same_run(run_dir, settings)
    rounds = _completed_rounds(run_dir)
    identity = load_identity(_round_dir(run_dir, len(rounds) - 1) / "identity.safetensors") if rounds else None
    if rounds:
        log.info("resuming %s after round %d", run_dir, len(rounds) - 1)
    spread = None  # of the latest proposals: the summary reports it whether or not the loop converged
    for index in range(len(rounds), settings.max_rounds + 1):
        proposals = _propose(backend, settings, identity, index, sample_callback)
        images, embeddings = proposals.images, embed(proposals.images)
        spread = mean_pairwise_distance(embeddings, settings.metric)
        if _check_undecided(settings, rounds, index, spread, len(images)):
            rest = _propose(backend, settings, identity, index, sample_callback, first=len(images),
                            count=settings.proposals.count - len(images))
            images, embeddings = torch.cat([images, rest.images]), torch.cat([embeddings, embed(rest.images)])
            spread = mean_pairwise_distance(embeddings, settings.metric)
        if callback is not None:
            callback(index, "proposals", images)
        if rounds and spread < _threshold(settings, rounds[0].spread):
            return _finish(run_dir, settings, rounds, identity, spread, converged=True)
        if index == settings.max_rounds:
            break
        choice = most_cohesive_cluster(embeddings, settings.clusters, settings.min_cluster_size, settings.metric,
                                       seed=settings.proposals.seed + index,
                                       expansion=settings.cluster_expansion if identity is not None else 1.0)
        try:
            scenes = scenes_for(settings.scenes, choice.indices)
            identity = _train(backend, settings, proposals.images[choice.indices], scenes, identity, index,
                              train_callback)
        except TrainingDiverged as error:
            log.error("round %d: %s; keeping round %d's identity", index, error, index - 1)
            break
        rounds.append(_save_round(_round_dir(run_dir, index), proposals, embeddings, choice, identity, spread,
                                  backend.family, settings.init_word))
    return _finish(run_dir, settings, rounds, identity, spread, converged=False)


def _check_undecided(settings: ChosenOneSettings, rounds: list[RoundResult], index: int, estimate: float,
                     drawn: int) -> bool:
    """Whether the smaller check after the last round (`drawn` proposals, spread `estimate`) lies too near an
    earlier identity's spread to decide."""
    if (index != settings.max_rounds or settings.last_check_margin is None or not settings.keep_tightest
            or len(rounds) < 2 or drawn >= settings.proposals.count):
        return False
    competitor = min(r.spread for r in rounds[1:])
    undecided = abs(estimate - competitor) <= settings.last_check_margin * competitor
    if undecided:
        log.info("the last identity's %d proposals spread %.4g, near an earlier identity's %.4g: drawing the other %d",
                 drawn, estimate, competitor, settings.proposals.count - drawn)
    return undecided


def tightest_round(rounds: list[RoundResult], final_spread: float) -> int:
    """The round whose identity drew the least spread proposals: round k's identity drew round k+1's, and the
    last round's drew the final ones."""
    drawn = [r.spread for r in rounds[1:]] + [final_spread]
    return min(range(len(rounds)), key=lambda k: drawn[k])


def _finish(run_dir: Path, settings: ChosenOneSettings, rounds: list[RoundResult], identity, final_spread,
            converged: bool) -> ChosenOneResult:
    kept = len(rounds) - 1 if rounds else None
    if settings.keep_tightest and rounds and final_spread is not None:
        kept = tightest_round(rounds, final_spread)
        if kept != len(rounds) - 1:
            log.info("keeping round %d's identity: its proposals spread least", kept)
            identity = load_identity(_round_dir(run_dir, kept) / "identity.safetensors")
    atomic_write_json({"rounds": [asdict(r) for r in rounds], "final_spread": final_spread,
                       "converged": converged, "kept_round": kept}, run_dir / "summary.json")
    return ChosenOneResult(identity, rounds, converged, kept)


def load_round_images(run_dir: str | Path, index: int) -> torch.Tensor:
    return load_file(str(_round_dir(Path(run_dir), index) / "proposals.safetensors"))["images"]
