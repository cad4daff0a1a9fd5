"""The optional VLM judge: answer parsing, the three-step conversation, the filter wiring, a tiny real VLM."""

from __future__ import annotations

import json

import pytest
import torch

from protagonist.core.dsd.judge import JUDGE_QUESTIONS, VLMJudge, load_judge, parse_verdict
from protagonist.core.dsd.pairs import PairMining, grid_prompts, mine_pairs
from protagonist.core.interface import ProtagonistError
from protagonist.core.proposals import ProposalSettings


@pytest.mark.parametrize("reply,expected", [
    ("Yes.", True), ("no", False), ("**No**, the second one has a hat.", False),
    ("Yes, although there is no hat in the second image.", True),
    ("The fur colour differs, so no.", False), ("Final answer: yes", True),
    ("Both are cats. The answer is no", False), ("Answer: No. (yes, they are both cats)", False),
    ("They are not the same cat.", False), ("The eyes look alike; noticeable stripes too.", None),
    ("", None), ("maybe", None),
])
def test_the_final_reply_is_parsed_robustly(reply, expected):
    assert parse_verdict(reply) is expected


class ScriptedJudge(VLMJudge):
    """The real conversation logic with scripted replies instead of a model."""

    def __init__(self, final_reply):
        super().__init__(model=None, processor=None)
        self.final_reply, self.calls = final_reply, []

    def _reply(self, messages, images, max_new_tokens):
        self.calls.append((messages, images))
        step = sum(m["role"] == "user" for m in messages)
        return ["a small blob", "first: red blob; second: red blob", self.final_reply(images)][step - 1]


def test_the_conversation_follows_the_three_steps():
    judge = ScriptedJudge(lambda images: "Yes")
    verdict = judge.judge(torch.rand(3, 16, 16), torch.rand(3, 16, 16))
    assert verdict.same is True and verdict.answers[0] == "a small blob" and len(verdict.answers) == 3
    messages, images = judge.calls[-1]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    assert [c["type"] for c in messages[0]["content"]] == ["image", "image", "text"]  # both images, once
    assert all(c["type"] == "text" for m in messages[1:] for c in m["content"])
    asked = [c["text"] for m in messages if m["role"] == "user" for c in m["content"] if c["type"] == "text"]
    assert asked == list(JUDGE_QUESTIONS)
    assert "common subject" in asked[0] and "details" in asked[1] and "yes or no" in asked[2]
    assert len(images) == 2 and images[0].size == (16, 16)


def test_a_pair_is_judged_once_for_both_orders():
    judge = ScriptedJudge(lambda images: "yes" if images[0].getpixel((0, 0)) == images[1].getpixel((0, 0)) else "no")
    panels = torch.zeros(3, 3, 8, 8)
    panels[0] = panels[1] = 1.0  # panels 0 and 1 "match"; 2 does not
    kept, verdicts = judge.filter(panels, [(0, 1), (1, 0), (0, 2), (2, 0)])
    assert kept == [(0, 1), (1, 0)] and set(verdicts) == {(0, 1), (0, 2)}
    assert len(judge.calls) == 2 * 3  # two conversations of three turns


def test_mining_keeps_only_what_the_judge_accepts(tiny_flux_backend, tmp_path):
    prompts = grid_prompts(["blob"], ["at night", "on a beach", "in the snow", "in a city"], 1, seed=0)
    settings = PairMining(threshold=-1.0, sampling=ProposalSettings(count=1, steps=2, cfg=2.0, height=64, width=64))

    class RejectFirst:
        def filter(self, panels, pairs):
            first = panels[0]
            same = [(i, j) for i, j in pairs if not (torch.equal(panels[i], first) or torch.equal(panels[j], first))]
            return same, {}

    summary = mine_pairs(tiny_flux_backend, prompts, tmp_path, lambda p: p.mean(dim=(2, 3)), settings,
                         judge=RejectFirst())
    assert summary == {"grids": 1, "pairs": 12, "kept": 6, "rejected": 6, "judge_rejected": 6}
    lines = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert len(lines) == 6 and not any(line["reference"].endswith("panel0.png") for line in lines)


def test_an_all_rejecting_judge_is_named_in_the_error(tiny_flux_backend, tmp_path):
    prompts = grid_prompts(["blob"], ["at night", "on a beach", "in the snow", "in a city"], 1, seed=0)
    settings = PairMining(threshold=-1.0, sampling=ProposalSettings(count=1, steps=2, cfg=2.0, height=64, width=64))
    judge = ScriptedJudge(lambda images: "No.")
    with pytest.raises(ProtagonistError, match="0 by the similarity threshold, 12 by the VLM judge"):
        mine_pairs(tiny_flux_backend, prompts, tmp_path, lambda p: p.mean(dim=(2, 3)), settings, judge=judge)
    verdicts = [json.loads(line) for line in (tmp_path / "judgements.jsonl").read_text().splitlines()]
    assert len(verdicts) == 6 and verdicts[0]["same"] is False and len(verdicts[0]["answers"]) == 3


def _tiny_llava(folder):
    """A randomly initialised LLaVA (CLIP vision tower + Llama) with a word-level tokenizer, saved to `folder`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    import transformers
    from transformers import (CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
                              LlavaProcessor, PreTrainedTokenizerFast)

    words = ("yes no the same a blob step what is common subject of two these images describe details each image "
             "first second then that from those individual identity not just kind answer or in name few words "
             "user assistant : . ? , ( )").split()
    specials = ["<pad>", "<unk>", "<s>", "</s>", "<image>"]
    vocab = {w: i for i, w in enumerate(specials + words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>",
                                        bos_token="<s>", eos_token="</s>", additional_special_tokens=["<image>"])
    template = ("{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}{% if c['type'] == 'image' %}"
                "<image> {% else %}{{ c['text'] }} {% endif %}{% endfor %}\n{% endfor %}"
                "{% if add_generation_prompt %}assistant: {% endif %}")
    # transformers 5 without torchvision has only the PIL image processor
    image_processor_class = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    processor = LlavaProcessor(image_processor=image_processor_class(size={"shortest_edge": 16},
                                                                     crop_size={"height": 16, "width": 16}),
                               tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default",
                               chat_template=template, image_token="<image>", num_additional_image_tokens=1)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       image_size=16, patch_size=8),
        text_config=LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                                pad_token_id=0, bos_token_id=2, eos_token_id=3),
        image_token_index=vocab["<image>"], vision_feature_layer=-1, vision_feature_select_strategy="default")
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(str(folder))
    processor.save_pretrained(str(folder))


def test_a_tiny_real_vlm_runs_the_three_turns(tmp_path):
    pytest.importorskip("transformers.models.llava")
    _tiny_llava(tmp_path / "vlm")
    judge = load_judge(tmp_path / "vlm", max_new_tokens=6)
    verdict = judge.judge(torch.rand(3, 24, 24), torch.rand(3, 20, 28))
    assert len(verdict.answers) == 3 and all(isinstance(a, str) for a in verdict.answers)
    assert verdict.same in (True, False, None)  # random weights: any reply, parsed without error


def test_missing_judge_weights_say_where_to_put_them(tmp_path):
    with pytest.raises(ProtagonistError, match="models/vlm/<name>"):
        load_judge(tmp_path / "nothing-here")
