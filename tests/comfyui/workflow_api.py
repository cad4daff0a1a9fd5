"""UI-format workflow → API-format prompt, checked against the live node registry.

The UI format stores widget values by position (`widgets_values`) and, since front end 1.16, every
widget input by name (`inputs[].widget.name`). The converter maps the values through the registry's
input order (the front end's own rule, including the extra `control_after_generate` value after seed
inputs and the upload button of image loaders) and refuses any node type, input name or count the
registry does not know, so a renamed, removed or reordered input breaks the tests, not the user.
The browser test checks that the front end's own `graphToPrompt()` gives the same prompt.
"""

from __future__ import annotations

import json

from .conftest import PACK_ROOT

WORKFLOWS_DIR = PACK_ROOT / "workflows"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONT_END_ONLY = {"Note", "MarkdownNote"}  # no backend node: not part of a prompt
DISPLAY_INPUTS = {"PreviewAny": {"preview"}}  # display widgets the front end adds to a prompt (not saved)


class WorkflowError(AssertionError):
    pass


def workflow_names() -> list[str]:
    return sorted(p.stem for p in WORKFLOWS_DIR.glob("*.json"))


def load_workflow(name: str) -> dict:
    return json.loads((WORKFLOWS_DIR / f"{name}.json").read_text())


def input_specs(class_def) -> dict[str, tuple]:
    """Required then optional inputs, in declaration order (the front end's order)."""
    spec = class_def.INPUT_TYPES()
    return {name: config for section in ("required", "optional") for name, config in spec.get(section, {}).items()}


def _options(config: tuple) -> dict:
    return config[1] if len(config) > 1 and isinstance(config[1], dict) else {}


def is_widget(config: tuple) -> bool:
    kind = config[0]
    return (isinstance(kind, list) or kind in WIDGET_TYPES) and not _options(config).get("forceInput", False)


def widget_slots(class_type: str, class_def) -> list[str | None]:
    """The input name of each `widgets_values` entry; None for a front-end-only value."""
    slots: list[str | None] = []
    for name, config in input_specs(class_def).items():
        if not is_widget(config):
            continue
        slots.append(name)
        options = _options(config)
        if config[0] == "INT" and options.get("control_after_generate", name in ("seed", "noise_seed")):
            slots.append(None)  # the control_after_generate combo
        if options.get("image_upload"):
            slots.append(None)  # the upload button
    return slots


def _convert_node(node: dict, registry: dict, links: dict) -> dict:
    kind = node["type"]
    if kind not in registry:
        raise WorkflowError(f"node {node['id']}: {kind} is not a registered node type")
    if node.get("mode", 0) != 0:
        raise WorkflowError(f"node {node['id']} ({kind}) is muted or bypassed; shipped workflows run every node")
    class_def = registry[kind]
    specs = input_specs(class_def)
    slots = widget_slots(kind, class_def)
    values = node.get("widgets_values", [])
    if len(values) != len(slots):
        raise WorkflowError(f"{kind} (node {node['id']}) has {len(values)} widget values but the registry expects "
                            f"{len(slots)} for {[s for s in slots if s]}")
    inputs = {slot: value for slot, value in zip(slots, values) if slot is not None}
    saved_widgets = [i["widget"]["name"] for i in node.get("inputs", []) if i.get("widget") and i["name"] in specs]
    if saved_widgets and saved_widgets != [s for s in slots if s is not None]:
        raise WorkflowError(f"{kind} (node {node['id']}) saved widgets {saved_widgets} but the registry has "
                            f"{[s for s in slots if s]}: an input was renamed, removed or reordered")
    for entry in node.get("inputs", []):
        name = entry["name"]
        if name not in specs:
            if entry.get("widget") and entry.get("link") is None:
                continue  # a front-end-only widget (the upload button)
            raise WorkflowError(f"{kind} (node {node['id']}) has no input {name!r} in the registry")
        if entry.get("link") is not None:
            _, origin, slot, *_ = links[entry["link"]]
            inputs[name] = [str(origin), slot]
    required = set(class_def.INPUT_TYPES().get("required", {}))
    if required - set(inputs):
        raise WorkflowError(f"{kind} (node {node['id']}) lacks required inputs {sorted(required - set(inputs))}")
    return {"class_type": kind, "inputs": inputs}


def ui_to_api(workflow: dict, registry: dict) -> dict:
    """The API-format prompt the front end would queue for this UI-format workflow."""
    links = {link[0]: link for link in workflow.get("links", [])}
    return {str(node["id"]): _convert_node(node, registry, links) for node in workflow["nodes"]
            if node["type"] not in FRONT_END_ONLY}


def notes(workflow: dict) -> list[str]:
    return [node["widgets_values"][0] for node in workflow["nodes"] if node["type"] in FRONT_END_ONLY]


def shrink(prompt: dict, loaders: dict[str, str], overrides: dict[tuple[str, str], object]) -> dict:
    """The twin: loaders replaced by tiny-model nodes, and small sizes/steps.

    Each override names (class_type, input); it must match an existing input of at least one node.
    """
    twin = json.loads(json.dumps(prompt))
    for node in twin.values():
        if node["class_type"] in loaders:
            node["class_type"], node["inputs"] = loaders[node["class_type"]], {}
    for (kind, name), value in overrides.items():
        targets = [n for n in twin.values() if n["class_type"] == kind]
        if not targets or any(name not in n["inputs"] for n in targets):
            raise WorkflowError(f"override {kind}.{name}: no such node input in the workflow")
        for node in targets:
            node["inputs"][name] = value
    return twin
