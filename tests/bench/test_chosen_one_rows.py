"""The Chosen One in the benchmark: the pure-cluster ceiling row, and scenes held out from the prompts."""

from protagonist.bench.harness import Character
from protagonist.bench.methods import chosen_one
from protagonist.sprites.oracle import Oracle


def test_pure_cluster_is_one_identity_with_what_the_subject_names_in_varied_contexts():
    images, scenes = chosen_one.pure_cluster("a yellow blob with a hat", seed=3, count=16)
    assert scenes == [""] * 16
    reading = Oracle.load().read(images)
    assert bool(reading.valid.all())
    names = [reading.names(i) for i in range(len(images))]
    for attribute in ("shape", "color", "pattern", "eyes", "accessory"):
        assert len({n[attribute] for n in names}) == 1
    assert names[0]["color"] == "yellow" and names[0]["accessory"] == "hat"
    assert len({(n["background"], n["position"]) for n in names}) > 5


def test_ceiling_trains_the_fast_recipe_once_on_the_pure_cluster(monkeypatch):
    seen = {}

    def fake_train(backend, images, token, settings, scenes):
        seen.update(images=images, token=token, settings=settings, scenes=scenes)
        return "identity"

    monkeypatch.setattr(chosen_one, "new_token", lambda backend, name, word: (name, word))
    monkeypatch.setattr(chosen_one, "train_identity", fake_train)
    character = Character("a red blob", ["on a beach, on the left"])
    state = chosen_one.PureClusterCeiling().prepare(None, character, seed=5)
    fast = chosen_one._sprite_settings("fast", character, 5, chosen_one.SUBJECT, "blob", None)
    assert seen["settings"] == fast.training and seen["token"] == ("<hero5>", "blob")
    assert seen["images"].shape == (16, 3, 32, 32)
    assert state.identity == "identity" and state.subject_prompt == "a red <hero5>"


def test_held_out_scenes_are_every_sprite_scene_but_the_characters_own():
    character = Character("a red blob", ["on a beach, on the left", "at night, in the center"])
    scenes = chosen_one.held_out_scenes(character)
    assert len(scenes) == 6 * 3 - 2 and len(set(scenes)) == len(scenes)
    assert "in a forest, on the right" in scenes and not set(character.contexts) & set(scenes)
    settings = chosen_one._sprite_settings("fast", character, 5, "a {}", "blob", {"scenes": "held-out"})
    assert settings.scenes == scenes


def test_pure_cluster_in_scenes_is_drawn_in_those_scenes_and_captioned_with_them():
    scenes = ("in a forest, on the left", "at night, on the right")
    images, captions = chosen_one.pure_cluster("a red blob", seed=2, count=12, scenes=scenes)
    reading = Oracle.load().read(images)
    assert set(captions) == set(scenes)
    for i, caption in enumerate(captions):
        names = reading.names(i)
        assert caption == f"{'in a forest' if names['background'] == 'forest' else 'at night'}, on the {names['position']}"


def test_subject_identity_prompt_puts_the_token_in_the_subject_and_trains_on_it():
    character = Character("a red blob with a hat", ["on a beach, on the left"])
    settings = chosen_one._sprite_settings("fast", character, 5, chosen_one.SUBJECT, "blob", None)
    assert settings.identity_prompt == "a red {} with a hat"
    assert settings.training.templates == ("a red {} with a hat",)
    assert settings.prompt == "a red blob with a hat"
    plain = chosen_one._sprite_settings("fast", character, 5, "a {}", "blob", None)
    assert plain.identity_prompt == "a {}" and plain.training.templates == ("a {}",)
    from_set = chosen_one._sprite_settings("fast", character, 5, "a {}", "blob", {"identity_prompt": "subject"})
    assert from_set.identity_prompt == "a red {} with a hat"
    assert chosen_one._sprite_settings("fast", character, 5, "a {}", "blob",
                                       {"identity_prompt": "a {} blob"}).identity_prompt == "a {} blob"
