"""The benchmark's outputs: a markdown table and a PNG contact sheet per method."""

from __future__ import annotations

from pathlib import Path

from ..core.images import contact_sheet, save_png
from .harness import MethodRun
from .scoring import Scores
from .stats import bootstrap_interval

COLUMNS = ("method", "identity consistency", "95 % interval (characters resampled)", "of readable pairs",
           "embedder distance", "prompt conformity", "subject conformity", "validity",
           "pairs agreeing per attribute (shape color pattern eyes accessory)", "tuning evals", "tuning s",
           "evals / image", "s / image", "÷ plain CFG drawn beside (evals / s)", "peak MB",
           "unreadable per attribute (shape color pattern eyes accessory background position)")


def table_row(run: MethodRun, scores: Scores) -> list[str]:
    images = max(len(run.prompts), 1)
    peak = max(run.tuning.peak_bytes, run.generation.peak_bytes) / 2**20
    low, high = bootstrap_interval(scores.character_pairs)
    return [run.method, f"{scores.identity_consistency:.1%}", f"{low:.1%}–{high:.1%}",
            f"{scores.readable_pair_consistency:.1%}",
            f"{scores.embedder_distance:.3f}",
            f"{scores.prompt_conformity:.1%}", f"{scores.subject_conformity:.1%}", f"{scores.validity:.1%}",
            " ".join(f"{v:.0%}" for v in scores.attribute_consistency.values()),
            f"{run.tuning.evaluations}", f"{run.tuning.seconds:.1f}", f"{run.generation.evaluations / images:.1f}",
            f"{run.generation.seconds / images:.3f}", ratio_to_plain(run), f"{peak:.0f}",
            " ".join(f"{v:.1%}" for v in scores.unreadable.values())]


def ratio_to_plain(run: MethodRun) -> str:
    """The generation's cost over plain CFG's on the same images, drawn beside it ("—" for plain itself)."""
    beside = run.plain_beside
    if beside is None or not beside.evaluations:
        return "—"
    return (f"{run.generation.evaluations / beside.evaluations:.2f}× / "
            f"{run.generation.seconds / max(beside.seconds, 1e-9):.2f}×")


def markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_contact_sheet(run: MethodRun, out_dir: Path, columns: int) -> Path:
    """Rows are characters, columns their prompts."""
    labels = [p.split(" ", 3)[-1][:18] for p in run.prompts]
    sheet = contact_sheet(run.images, columns=columns, labels=labels, scale=3)
    return save_png(sheet, out_dir / f"{run.method}_contact_sheet.png")
