from protagonist.bench.harness import Character
from protagonist.bench.methods import reference
from protagonist.sprites.captions import parse_prompt


def test_identity_for_keeps_what_the_subject_names_and_is_seeded():
    identity = reference.identity_for("a yellow blob with a hat", seed=4)
    assert identity.names()["color"] == "yellow" and identity.names()["accessory"] == "hat"
    assert identity == reference.identity_for("a yellow blob with a hat", seed=4)
    others = {reference.identity_for("a blob", seed=s) for s in range(20)}
    assert len(others) > 10


def test_named_identity_rewrites_the_subject_and_keeps_the_context(monkeypatch):
    seen = []
    monkeypatch.setattr(reference, "draw", lambda backend, prompts, seeds, settings: seen.extend(prompts))
    method = reference.NamedIdentity()
    character = Character("a red blob", ["on a beach, on the left", "at night, in the center"])
    state = method.prepare(None, character, seed=7)
    method.generate(None, state, character.prompts, [0, 1], None)
    identity = reference.identity_for("a red blob", 7).names()
    for prompt, context in zip(seen, character.contexts):
        assert prompt.endswith(" blob " + context)
        parsed = parse_prompt(prompt)
        assert {a: parsed[a] for a in identity} == identity
