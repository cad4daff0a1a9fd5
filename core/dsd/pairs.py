"""DSD's data pipeline: grid prompts → grid images → panels → ordered pairs → filtered pair dataset.

The dataset is a folder of panel PNGs and `pairs.jsonl` (one line per kept pair: reference, target,
the target panel's prompt, similarity). Grids are processed in order and `grids.jsonl` records each
finished grid, so an interrupted run resumes after the last finished grid.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..images import save_png, to_pil
from ..interface import DiffusionBackend, ProtagonistError
from ..proposals import ProposalSettings, generate_proposals
from .grids import filter_pairs, ordered_pairs, split_grid

log = logging.getLogger(__name__)

DEFAULT_GRID_TEMPLATE = "a {rows}x{cols} grid of the same {subject}: {panels}"


@dataclass
class GridPrompt:
    subject: str  # e.g. "blob", "red-haired woman in a green coat"
    panels: list[str]  # one scene per panel, row-major
    template: str = DEFAULT_GRID_TEMPLATE

    def text(self, rows: int, cols: int) -> str:
        return self.template.format(rows=rows, cols=cols, subject=self.subject, panels="; ".join(self.panels))

    def panel_prompt(self, index: int) -> str:
        return f"a {self.subject} {self.panels[index]}"


def grid_prompts(subjects: list[str], scenes: list[str], count: int, panels: int = 4, seed: int = 0,
                 template: str = DEFAULT_GRID_TEMPLATE) -> list[GridPrompt]:
    """`count` grid prompts: a random subject in `panels` distinct random scenes each."""
    if len(scenes) < panels:
        raise ProtagonistError(f"{len(scenes)} scenes cannot fill {panels} distinct panels")
    rng = np.random.default_rng(seed)
    return [GridPrompt(str(rng.choice(subjects)), [scenes[i] for i in rng.choice(len(scenes), panels, replace=False)],
                       template) for _ in range(count)]


@dataclass
class PairMining:
    rows: int = 2
    cols: int = 2
    threshold: float = 0.8
    detect_gutters: bool = False
    sampling: ProposalSettings = field(default_factory=lambda: ProposalSettings(count=1, steps=28, cfg=3.5))


def _done_grids(folder: Path) -> set[int]:
    path = folder / "grids.jsonl"
    return {json.loads(line)["grid"] for line in path.read_text().splitlines()} if path.exists() else set()


def _append(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _judged(judge, panels, kept, index: int, folder: Path) -> list[tuple[int, int]]:
    """The pairs the judge calls the same; every verdict (with its reasoning) goes to judgements.jsonl."""
    if judge is None or not kept:
        return kept
    same, verdicts = judge.filter(panels, kept)
    for (i, j), verdict in verdicts.items():
        _append(folder / "judgements.jsonl", {"grid": index, "panels": [i, j], "same": verdict.same,
                                              "answers": verdict.answers})
    return same


def _drop_unfinished(folder: Path, done: set[int]) -> None:
    """Forget the pairs of a grid that was interrupted before `grids.jsonl` recorded it (it is redone)."""
    path = folder / "pairs.jsonl"
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    finished = [line for line in lines if json.loads(line)["grid"] in done]
    if len(finished) < len(lines):
        temporary = path.with_suffix(".tmp")
        temporary.write_text("".join(line + "\n" for line in finished))
        temporary.replace(path)


def mine_pairs(backend: DiffusionBackend, prompts: list[GridPrompt], folder: str | Path,
               embed: Callable[[torch.Tensor], torch.Tensor], settings: PairMining, callback=None,
               judge=None) -> dict:
    """Generate, split, filter and write pairs for every grid prompt not yet done; returns the counts.

    `judge` (optional, e.g. :class:`~protagonist.core.dsd.judge.VLMJudge`) re-checks the pairs that pass the
    similarity threshold: `judge.filter(panels, pairs)` → (kept pairs, verdicts).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    done = _done_grids(folder)
    _drop_unfinished(folder, done)
    pairs = ordered_pairs(settings.rows * settings.cols)
    for index, prompt in enumerate(prompts):
        if index in done:
            continue
        sampling = ProposalSettings(**{**asdict(settings.sampling), "count": 1, "seed": settings.sampling.seed + index})
        grid = generate_proposals(backend, prompt.text(settings.rows, settings.cols), "", sampling).images[0]
        panels = split_grid(grid, settings.rows, settings.cols, settings.detect_gutters)
        similar, similarity = filter_pairs(embed(panels), pairs, settings.threshold)
        kept = _judged(judge, panels, similar, index, folder)
        for k, panel in enumerate(panels):
            save_png(to_pil(panel), folder / f"grid{index:06d}_panel{k}.png")
        for (i, j), s in zip(pairs, similarity):
            if (i, j) in kept:
                _append(folder / "pairs.jsonl", {"grid": index, "reference": f"grid{index:06d}_panel{i}.png",
                                                 "target": f"grid{index:06d}_panel{j}.png",
                                                 "prompt": prompt.panel_prompt(j), "similarity": round(s, 4)})
        record = {"grid": index, "prompt": prompt.text(settings.rows, settings.cols), "kept": len(kept),
                  "pairs": len(pairs)}
        if judge is not None:
            record["judge_rejected"] = len(similar) - len(kept)
        _append(folder / "grids.jsonl", record)
        if callback is not None:
            callback(index, grid)
    return summarise(folder, settings.threshold)


def summarise(folder: Path, threshold: float) -> dict:
    grids = [json.loads(line) for line in (folder / "grids.jsonl").read_text().splitlines()]
    kept = sum(g["kept"] for g in grids)
    total = sum(g["pairs"] for g in grids)
    judged = any("judge_rejected" in g for g in grids)
    by_judge = sum(g.get("judge_rejected", 0) for g in grids)
    if kept == 0:
        how = (f" ({total - by_judge} by the similarity threshold, {by_judge} by the VLM judge; see "
               f"judgements.jsonl)" if judged else "")
        raise ProtagonistError(f"no pair passed the similarity threshold {threshold}{' and the judge' * judged}: "
                               f"all {total} pairs of {len(grids)} grids were rejected{how}; lower the threshold "
                               f"or make more grids")
    summary = {"grids": len(grids), "pairs": total, "kept": kept, "rejected": total - kept}
    if judged:
        summary["judge_rejected"] = by_judge
    return summary
