"""The word-state subspace OneActor's offset can be kept in: words, basis, projector, tuning, identity files."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from protagonist.core.interface import ProtagonistError
from protagonist.core.oneactor.identity import load_identity, make_identity, save_identity
from protagonist.core.oneactor.projector import Projector
from protagonist.core.oneactor.subspace import vocabulary_words, word_state_basis, word_state_prompts
from protagonist.core.oneactor.tuning import OneActorTuning, ProposalSet, tune_projector
from protagonist.core.proposals import ProposalSettings, generate_proposals


class _Vocab:
    def __init__(self, tokens):
        self.tokens = tokens

    def get_vocab(self):
        return {t: i for i, t in enumerate(self.tokens)}


def test_whole_words_come_from_clip_and_sentencepiece_vocabularies():
    clip = _Vocab(["red</w>", "re", "a</w>", "2x2</w>", "Tall</w>", "<|endoftext|>", "striped</w>"])
    assert vocabulary_words(clip) == ["red", "striped", "tall"]
    assert vocabulary_words(_Vocab(["▁hat", "hat", "▁of", "▁x1", "▁bow"])) == ["bow", "hat"]


def test_subspace_prompts_end_with_the_base_word_after_one_to_four_words():
    prompts = word_state_prompts(["red", "tall", "round"], "blob", 200, seed=3)
    assert prompts == word_state_prompts(["red", "tall", "round"], "blob", 200, seed=3)
    assert all(p.startswith("a ") and p.endswith(" blob") and 3 <= len(p.split()) <= 6 for p in prompts)
    assert {len(p.split()) for p in prompts} == {3, 4, 5, 6}


def test_the_basis_is_orthonormal_and_follows_the_base_words_state(tiny_sdxl_backend):
    words = ["red", "green", "round", "square", "striped", "plain", "hat", "bow"]
    basis = word_state_basis(tiny_sdxl_backend, "blob", words, rank=4, prompts=60)
    width = tiny_sdxl_backend.encode_prompts([""]).embeds.shape[-1]
    assert basis.shape == (4, width)
    assert torch.allclose(basis @ basis.T, torch.eye(4), atol=1e-5)
    with torch.no_grad():  # the state's largest variation over such prompts lies mostly in the span
        cond = tiny_sdxl_backend.encode_prompts(word_state_prompts(words, "blob", 60, seed=9), word="blob")
    states = torch.stack([cond.embeds[b, p[-1]].float() for b, p in enumerate(cond.word_positions)])
    centred = states - states.mean(0)
    kept = ((centred @ basis.T) @ basis).norm() / centred.norm()
    random_basis = torch.linalg.qr(torch.randn(width, 4))[0].T
    assert kept > 2 * ((centred @ random_basis.T) @ random_basis).norm() / centred.norm()
    with pytest.raises(ProtagonistError, match="rank"):
        word_state_basis(tiny_sdxl_backend, "blob", words, rank=0, prompts=10)


def test_a_projector_with_a_basis_outputs_offsets_in_its_span():
    projector = Projector(64, 4, 4, 96).eval()
    basis = torch.linalg.qr(torch.randn(96, 5))[0].T
    free = projector(torch.randn(3, 64, 4, 4))
    kept = projector.set_output_basis(basis)(torch.randn(3, 64, 4, 4))
    assert torch.allclose((kept @ basis.T) @ basis, kept, atol=1e-5)
    assert not torch.allclose((free @ basis.T) @ basis, free, atol=1e-3)


def test_tuning_in_the_subspace_and_the_identity_file_keep_it(tiny_sdxl_backend, tmp_path):
    settings = ProposalSettings(count=4, seed=5, steps=3, cfg=4.0, height=32, width=32, batch_size=4)
    proposals = generate_proposals(tiny_sdxl_backend, "a photo of a blob", "", settings, feature_point="mid_block")
    data = ProposalSet.from_proposals(proposals, target=0, image_size=(32, 32))
    tuning = OneActorTuning(steps=3, word_subspace=3, subspace_words=("red", "green", "round", "hat", "bow"),
                            mirror_target=False)
    tuned = tune_projector(tiny_sdxl_backend, data, "blob", tuning)
    basis = tuned.projector.output_basis
    assert basis.shape[0] == 3
    identity = make_identity(tuned.projector, data.features, "blob", "sdxl")
    assert torch.allclose((identity.delta_target @ basis.T) @ basis, identity.delta_target, atol=1e-4)
    path = save_identity(identity, tmp_path / "id.safetensors")
    reloaded = load_identity(path, tiny_sdxl_backend)
    assert torch.equal(reloaded.projector.output_basis, basis)
    assert torch.allclose(reloaded.projector(data.features)[0], identity.delta_target, atol=1e-5)
    older = {k: v for k, v in load_file(str(path)).items() if k != "projector.output_basis"}
    save_file(older, str(tmp_path / "old.safetensors"), metadata=_metadata(path))
    assert load_identity(tmp_path / "old.safetensors").projector.output_basis.shape[0] == 0


def _metadata(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata()
