"""ComfyUI's real web front end in headless Chromium (Playwright driving the system's Debian chromium)."""

from __future__ import annotations

import contextlib
import shutil

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
VIEWPORT = {"width": 2400, "height": 1500}


def chromium_path() -> str | None:
    for name in CHROMIUM_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


@contextlib.contextmanager
def comfy_page(url: str):
    """A page with ComfyUI's app loaded (`window.app` ready); never downloads a browser."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport=VIEWPORT)
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(url)
            page.page_errors = errors
            page.wait_for_function("window.app && window.app.graph && window.LiteGraph && "
                                   "Object.keys(LiteGraph.registered_node_types).length > 100", timeout=120_000)
            page.startup_errors = list(errors)  # the app's own, before any workflow is loaded
            errors.clear()
            yield page
        finally:
            browser.close()


# Builds a graph from a workflow spec (see workflow_specs.py) with the front end's own node classes,
# lays it out (one band per group, columns by depth), fits the view, and returns the serialised graph.
BUILD_JS = """
(spec) => {
  const g = app.graph;
  g.clear();
  const byId = {};
  const note = LiteGraph.createNode("MarkdownNote") || LiteGraph.createNode("Note");
  note.title = "Read me";
  g.add(note);
  note.widgets[0].value = spec.note;
  note.size = [460, 560];
  for (const s of spec.nodes) {
    const n = LiteGraph.createNode(s.type);
    if (!n) throw new Error("unknown node type " + s.type);
    if (s.title) n.title = s.title;
    g.add(n);
    byId[s.id] = n;
    for (const [name, value] of Object.entries(s.widgets)) {
      const w = (n.widgets || []).find((w) => w.name === name);
      if (!w) throw new Error(`${s.type} has no widget ${name}`);
      w.value = value;
    }
  }
  for (const s of spec.nodes) {
    for (const [name, [src, slot]] of Object.entries(s.links)) {
      const dst = byId[s.id];
      const index = dst.findInputSlot(name);
      if (index < 0) throw new Error(`${s.type} has no input ${name}`);
      if (!byId[src].connect(slot, dst, index)) throw new Error(`cannot link ${src}:${slot} to ${s.type}.${name}`);
    }
  }
  for (const n of Object.values(byId)) n.setSize(n.computeSize());
  // layout
  const groupOf = {};
  spec.groups.forEach(([title, ids], b) => ids.forEach((id) => (groupOf[id] = b + 1)));
  const bands = {};
  for (const s of spec.nodes) {
    const b = groupOf[s.id] || 0;
    ((bands[b] ||= {})[s.column] ||= []).push(byId[s.id]);
  }
  const columns = Math.max(...spec.nodes.map((s) => s.column)) + 1;
  const widths = Array(columns).fill(0);
  for (const s of spec.nodes) widths[s.column] = Math.max(widths[s.column], byId[s.id].size[0]);
  const gap = 50, title = LiteGraph.NODE_TITLE_HEIGHT;
  const xs = [note.size[0] + 2 * gap];
  for (let c = 1; c < columns; c++) xs.push(xs[c - 1] + widths[c - 1] + gap);
  let y = title + gap;
  note.pos = [gap, y];
  const bandBoxes = {};
  for (const b of Object.keys(bands).map(Number).sort((a, b) => a - b)) {
    let bottom = y;
    const top = y + (b ? title + 10 : 0);
    for (const [c, nodes] of Object.entries(bands[b])) {
      let cy = top;
      for (const n of nodes) {
        n.pos = [xs[c], cy];
        cy += n.size[1] + title + 25;
      }
      bottom = Math.max(bottom, cy);
    }
    bandBoxes[b] = [y, bottom];
    y = bottom + gap;
  }
  spec.groups.forEach(([name, ids], b) => {
    const members = ids.map((id) => byId[id]);
    const x0 = Math.min(...members.map((n) => n.pos[0])) - 15;
    const x1 = Math.max(...members.map((n) => n.pos[0] + n.size[0])) + 15;
    const [y0, y1] = bandBoxes[b + 1];
    const group = new LiteGraph.LGraphGroup(name);
    group.pos = [x0, y0];
    group.size = [x1 - x0, y1 - y0 - 10];
    g.add(group);
  });
  // fit the whole graph in the default view
  const all = [note, ...Object.values(byId)];
  const minX = Math.min(...all.map((n) => n.pos[0])) - 20, minY = Math.min(...all.map((n) => n.pos[1])) - title - 20;
  const maxX = Math.max(...all.map((n) => n.pos[0] + n.size[0])) + 20;
  const maxY = Math.max(...all.map((n) => n.pos[1] + n.size[1])) + 20;
  const canvas = app.canvas.canvas;
  const scale = Math.min(canvas.clientWidth / (maxX - minX), canvas.clientHeight / (maxY - minY), 1.0) * 0.92;
  const offset = [(canvas.clientWidth / scale - (maxX - minX)) / 2 - minX,
                  (canvas.clientHeight / scale - (maxY - minY)) / 2 - minY];
  const json = g.serialize();
  json.extra = { ...(json.extra || {}), ds: { scale, offset } };
  return JSON.stringify(json);  // drops undefined fields (Playwright would turn them into null)
}
"""

LOAD_JS = """
async (workflow) => {
  app.extensionManager?.toast?.removeAll?.();
  document.querySelectorAll(".p-toast-message").forEach((e) => e.remove());
  await app.loadGraphData(workflow, true, true, null);
  await new Promise((resolve) => setTimeout(resolve, 300));
  app.canvas.setDirty(true, true);
}
"""

# What the front end reports about the loaded graph: missing node types, nodes flagged with errors,
# combo values not among the options, numbers out of range, links whose types do not match.
INSPECT_JS = """
() => {
  const report = { missing: [], errors: [], invalid: [], badLinks: [], nodes: 0 };
  for (const n of app.graph.nodes) {
    report.nodes += 1;
    if (!(n.type in LiteGraph.registered_node_types)) report.missing.push(n.type);
    if (n.has_errors) report.errors.push(n.type);
    for (const w of n.widgets || []) {
      if (w.type === "combo") {
        let values = w.options?.values;
        if (typeof values === "function") values = values(w, n);
        if (Array.isArray(values) && !values.includes(w.value)) report.invalid.push(`${n.type}.${w.name}=${w.value}`);
      } else if (w.type === "number") {
        const { min, max } = w.options || {};
        if ((min !== undefined && w.value < min) || (max !== undefined && w.value > max))
          report.invalid.push(`${n.type}.${w.name}=${w.value}`);
      }
    }
    for (const input of n.inputs || []) {
      if (input.link == null) continue;
      const link = app.graph.links[input.link] ?? app.graph.links.get?.(input.link);
      if (!link) { report.badLinks.push(`${n.type}.${input.name}: dangling`); continue; }
      const origin = app.graph.getNodeById(link.origin_id);
      const outType = origin?.outputs?.[link.origin_slot]?.type;
      const ok = outType && (input.type === "*" || outType === "*" ||
                             String(input.type).split(",").includes(String(outType)));
      if (!ok) report.badLinks.push(`${n.type}.${input.name}: ${outType} -> ${input.type}`);
    }
  }
  // alerts the front end raised while loading (schema validation, missing nodes, …)
  report.alerts = [...document.querySelectorAll(".p-toast-message-error, .p-toast-message-warn")]
    .map((e) => e.innerText.slice(0, 300));
  report.dialogs = [...document.querySelectorAll(".p-dialog")].map((e) => e.innerText.slice(0, 300));
  return report;
}
"""

PROMPT_JS = "async () => (await app.graphToPrompt()).output"
