"""The presets: `fast` costs at most a quarter of `paper` even when both run to their round limits."""

from __future__ import annotations

from dataclasses import replace

import pytest
from protagonist.core.chosen_one.loop import proposal_batches, worst_case_evaluations
from protagonist.core.chosen_one.presets import preset
from protagonist.core.interface import ProtagonistError


def test_worst_case_evaluations_counts_proposals_and_training():
    paper = preset("paper", "a blob", "blob")
    assert worst_case_evaluations(paper) == 6 * 128 * 35 * 2 + 5 * 500 * 1
    fast = preset("fast", "a blob", "blob")
    # CFG on 13 of 20 steps; the check after the last round draws 16 proposals, and the other 16 where undecided
    assert worst_case_evaluations(fast) == 4 * 32 * (13 * 2 + 7) + 3 * 150 * 4
    assert worst_case_evaluations(replace(fast, last_check_margin=None)) == (3 * 32 + 16) * 33 + 3 * 150 * 4


def test_proposal_batches_count_every_round_with_a_short_last_batch():
    paper = preset("paper", "a blob", "blob")
    assert proposal_batches(paper) == 6 * -(-128 // paper.proposals.batch_size)
    assert proposal_batches(replace(paper, proposals=replace(paper.proposals, count=10, batch_size=4))) == 6 * 3
    fast = preset("fast", "a blob", "blob")
    twelve = replace(fast, proposals=replace(fast.proposals, batch_size=12))
    assert proposal_batches(twelve) == 4 * 3 and proposal_batches(replace(twelve, last_check_margin=None)) == 3 * 3 + 2


def test_fast_costs_at_most_a_quarter_of_paper():
    paper, fast = preset("paper", "a blob", "blob"), preset("fast", "a blob", "blob")
    assert worst_case_evaluations(fast) * 4 <= worst_case_evaluations(paper)
    assert fast.keep_tightest and fast.cluster_expansion > 1
    assert not paper.keep_tightest and paper.cluster_expansion == 1  # the published recipe


def test_unknown_preset_names_the_choices():
    with pytest.raises(ProtagonistError, match="paper"):
        preset("quick", "a blob", "blob")
