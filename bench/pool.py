"""`python -m protagonist.bench.pool RUN …`: one method's runs on several seed sets, pooled into one score.

Each RUN is a `python -m protagonist.bench … --out RUN` folder. The pooled identity consistency is the share of
agreeing pairs over all the runs' characters, with the interval from resampling characters (`bench.stats`);
conformity and validity are pooled over images.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .harness import DEFAULT_PROMPTS, read_characters
from .stats import bootstrap_interval, character_pairs, pooled_share

COLUMNS = ("run", "characters", "identity consistency", "95 % interval (characters resampled)", "prompt conformity",
           "validity")


def run_counts(scores: dict, prompts_per_character: list[int]) -> list[tuple[int, int]]:
    """The run's (agreeing pairs, pairs) per character; runs written before the benchmark stored them are
    counted again from their identities, with the characters' sizes from the prompt file."""
    if scores.get("character_pairs"):
        return [tuple(pair) for pair in scores["character_pairs"]]
    character_of = [c for c, size in enumerate(prompts_per_character) for _ in range(size)]
    if len(character_of) != len(scores["identities"]):
        raise SystemExit(f"the run has {len(scores['identities'])} images, the prompt file {len(character_of)}: "
                         "pass the --prompts file and --characters count the run used")
    return character_pairs(scores["identities"], character_of)


def load_scores(run: Path, method: str) -> dict:
    path = run / "results.json"
    if not path.is_file():
        raise SystemExit(f"{path} does not exist: give folders written by `python -m protagonist.bench --out`")
    results = json.loads(path.read_text())
    if method not in results:
        raise SystemExit(f"{path} has no {method!r} run; it has {sorted(results)}")
    return results[method]["scores"]


def pooled_table(runs: list[Path], method: str, prompts_per_character: list[int]) -> str:
    rows, everything, images, conformity, validity = [], [], 0, 0.0, 0.0
    for run in runs:
        scores = load_scores(run, method)
        counts = run_counts(scores, prompts_per_character)
        count = len(scores["identities"])
        rows.append(_row(run.name, counts, scores["prompt_conformity"], scores["validity"]))
        everything += counts
        images += count
        conformity += scores["prompt_conformity"] * count
        validity += scores["validity"] * count
    rows.append(_row("**pooled**", everything, conformity / images, validity / images))
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def _row(name: str, counts, conformity: float, validity: float) -> list[str]:
    low, high = bootstrap_interval(counts)
    return [name, str(len(counts)), f"{pooled_share(counts):.1%}", f"{low:.1%}–{high:.1%}", f"{conformity:.1%}",
            f"{validity:.1%}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m protagonist.bench.pool", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="bench --out folders, e.g. one per --seed")
    parser.add_argument("--method", default="oneactor", help="which method's rows to pool")
    parser.add_argument("--prompts", default=str(DEFAULT_PROMPTS), help="the prompt file the runs used")
    parser.add_argument("--characters", type=int, default=0, help="the runs' --characters (0: all)")
    args = parser.parse_args(argv)
    sizes = [len(c.contexts) for c in read_characters(args.prompts)[: args.characters or None]]
    print(pooled_table(args.runs, args.method, sizes), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
