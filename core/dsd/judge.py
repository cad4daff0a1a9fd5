"""An optional vision-language judge of candidate pairs: DSD's three-step chain of thought.

The paper filters grid pairs with a VLM that (1) names the common subject of the two images,
(2) describes its details in each, and (3) says whether they are the same. The prompts were never
released; these follow that recipe. Any local `transformers` image-text-to-text model with a chat
template works (Qwen2-VL, LLaVA, …); nothing is ever sent to a cloud API.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..images import to_pil
from ..interface import ProtagonistError

log = logging.getLogger(__name__)

JUDGE_QUESTIONS = (
    "Step 1: What is the common subject of these two images? Name it in a few words.",
    "Step 2: Describe the details of that subject in each image: the first image, then the second image.",
    ("Step 3: From those details, is the subject in the two images the same individual (the same identity, "
     "not just the same kind)? Answer yes or no."),
)
WHERE_TO_PUT = ("put a transformers vision-language model folder (config.json, *.safetensors and the processor / "
                "tokenizer files, e.g. a download of Qwen/Qwen2-VL-2B-Instruct) at models/vlm/<name> in ComfyUI or "
                "any folder and pass its path, or pass a hub id with network access")

_ANSWER = re.compile(r"\banswer\b(?:\s+is)?\W{0,6}(yes|no)\b")
_LEADING = re.compile(r"^[\W_]*(yes|no)\b")
_WORD = re.compile(r"\b(yes|no)\b")
_DIFFERENT = re.compile(r"\bnot\s+(?:the\s+)?same\b|\bdifferent\b")


def parse_verdict(text: str) -> bool | None:
    """True for yes, False for no, None when the reply does not say.

    In order: an explicit "answer: yes/no" (the last one wins), a reply that starts with yes/no
    (markdown and punctuation skipped), a reply that contains only one of the two words, and finally
    "not the same" / "different" with neither word.
    """
    lowered = text.lower()
    explicit = _ANSWER.findall(lowered)
    if explicit:
        return explicit[-1] == "yes"
    leading = _LEADING.match(lowered)
    if leading:
        return leading[1] == "yes"
    words = set(_WORD.findall(lowered))
    if len(words) == 1:
        return words.pop() == "yes"
    if not words and _DIFFERENT.search(lowered):
        return False
    return None


@dataclass
class Verdict:
    same: bool | None  # None: the final reply said neither yes nor no (the pair is rejected)
    answers: list[str] = field(default_factory=list)


class VLMJudge:
    """Asks a chat VLM the three questions about two images, one conversation per pair.

    Args:
        model: a `transformers` image-text-to-text model (e.g. from `AutoModelForImageTextToText`).
        processor: its `AutoProcessor` (tokenizer, image processor and chat template).
        max_new_tokens: reply length limit of steps 1 and 2 (step 3 gets at most 32).
    """

    def __init__(self, model, processor, max_new_tokens: int = 160, questions: tuple[str, ...] = JUDGE_QUESTIONS):
        if len(questions) != 3:
            raise ProtagonistError(f"the judge asks three questions, got {len(questions)}")
        self.model, self.processor = model, processor
        self.max_new_tokens, self.questions = max_new_tokens, questions

    @staticmethod
    def conversation(questions: tuple[str, ...], answers: list[str]) -> list[dict]:
        """The chat so far: both images and question 1, then each answer and the next question."""
        turns = [{"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                              {"type": "text", "text": questions[0]}]}]
        for answer, question in zip(answers, questions[1:]):
            turns.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
            turns.append({"role": "user", "content": [{"type": "text", "text": question}]})
        return turns

    def _reply(self, messages: list[dict], images: list, max_new_tokens: int) -> str:
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = self.processor(text=[text], images=images, return_tensors="pt").to(self.model.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new = out[:, inputs["input_ids"].shape[1]:]
        return self.processor.batch_decode(new, skip_special_tokens=True)[0].strip()

    def judge(self, first: torch.Tensor, second: torch.Tensor) -> Verdict:
        """Two [3, H, W] images in [0, 1] → the verdict with the three replies."""
        images, answers = [to_pil(first), to_pil(second)], []
        for step in range(3):
            limit = self.max_new_tokens if step < 2 else min(self.max_new_tokens, 32)
            answers.append(self._reply(self.conversation(self.questions, answers), images, limit))
        return Verdict(parse_verdict(answers[-1]), answers)

    def filter(self, panels: torch.Tensor, pairs: list[tuple[int, int]]
               ) -> tuple[list[tuple[int, int]], dict[tuple[int, int], Verdict]]:
        """The pairs judged the same; (i, j) and (j, i) share one verdict (keyed by the sorted pair)."""
        verdicts: dict[tuple[int, int], Verdict] = {}
        for i, j in pairs:
            key = (min(i, j), max(i, j))
            if key not in verdicts:
                verdicts[key] = self.judge(panels[key[0]], panels[key[1]])
                if verdicts[key].same is None:
                    log.info("judge gave no yes/no for panels %s: %r", key, verdicts[key].answers[-1][:80])
        kept = [(i, j) for i, j in pairs if verdicts[(min(i, j), max(i, j))].same]
        return kept, verdicts


def load_judge(source: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
               max_new_tokens: int = 160) -> VLMJudge:
    """A :class:`VLMJudge` from a local model folder or a hub id (`AutoProcessor` + `AutoModelForImageTextToText`)."""
    try:
        from transformers import AutoModelForImageTextToText, AutoProcessor
    except ImportError as error:
        raise ProtagonistError("the VLM judge needs transformers>=4.46 (AutoModelForImageTextToText)") from error

    source = str(source)
    if (source.startswith((".", "/", "~")) or Path(source).expanduser().exists()) and \
            not (Path(source).expanduser() / "config.json").exists():
        raise ProtagonistError(f"no vision-language model at {source} (no config.json); {WHERE_TO_PUT}")
    try:
        processor = AutoProcessor.from_pretrained(source)
        model = AutoModelForImageTextToText.from_pretrained(source, **({"torch_dtype": dtype} if dtype else {}))
    except (OSError, ValueError) as error:
        raise ProtagonistError(f"could not load the judge {source!r} ({error}); {WHERE_TO_PUT}") from error
    return VLMJudge(model.to(device).eval(), processor, max_new_tokens)
