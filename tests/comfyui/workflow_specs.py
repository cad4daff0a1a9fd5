"""The shipped workflows, described once: nodes, widget values by input name, links, notes.

`build_workflows.py` turns these into ComfyUI UI-format files through the real front end (so widget
order and format are the front end's own). The committed `workflows/*.json` are what users load and
what the tests read; edit a workflow here and rebuild, or edit it in ComfyUI and save it over the file.
Defaults are the README's recommended settings for real SDXL / FLUX checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SDXL_CHECKPOINT = "sd_xl_base_1.0.safetensors"
FLUX_UNET, FLUX_CLIP_L, FLUX_T5, FLUX_VAE = "flux1-dev.safetensors", "clip_l.safetensors", \
    "t5xxl_fp16.safetensors", "ae.safetensors"
OPENPOSE_SDXL = "OpenPoseXL2.safetensors"
DINOV2 = "dinov2-large"
DSD_FILE = "dsd_flux1_dev.safetensors"
IDENTITY_FILE = "oneactor_identity.safetensors"
REFERENCE_IMAGE = "protagonist_reference.png"
POSE_IMAGES = [f"protagonist_pose_{i}.png" for i in range(1, 5)]
NEGATIVE = "blurry, deformed, lowres, watermark, text"

# model files each workflow names, by ComfyUI model folder (the browser test creates empty placeholders)
MODEL_FILES = {"checkpoints": [SDXL_CHECKPOINT], "diffusion_models": [FLUX_UNET], "text_encoders": [FLUX_CLIP_L, FLUX_T5],
               "vae": [FLUX_VAE], "controlnet": [OPENPOSE_SDXL], "protagonist": [DSD_FILE, IDENTITY_FILE]}
INPUT_FILES = [REFERENCE_IMAGE, *POSE_IMAGES]


@dataclass
class Node:
    id: int
    type: str
    widgets: dict
    links: dict
    title: str | None = None

    def __getitem__(self, slot: int) -> tuple[int, int]:
        return (self.id, slot)


@dataclass
class Workflow:
    name: str
    note: str
    nodes: list[Node] = field(default_factory=list)
    groups: list[tuple[str, list[int]]] = field(default_factory=list)

    def add(self, type_: str, title: str | None = None, **inputs) -> Node:
        links = {k: v for k, v in inputs.items() if isinstance(v, tuple)}
        widgets = {k: v for k, v in inputs.items() if not isinstance(v, tuple)}
        node = Node(len(self.nodes) + 1, type_, widgets, links, title)
        self.nodes.append(node)
        return node

    def group(self, title: str, nodes: list[Node]) -> None:
        self.groups.append((title, [n.id for n in nodes]))

    def columns(self) -> dict[int, int]:
        """Longest path from a source, so every link points right."""
        depth: dict[int, int] = {}
        for node in self.nodes:  # nodes are added after their inputs
            depth[node.id] = max((depth[src] + 1 for src, _ in node.links.values()), default=0)
        return depth

    def to_json(self) -> dict:
        columns = self.columns()
        return {"name": self.name, "note": self.note, "groups": self.groups,
                "nodes": [{"id": n.id, "type": n.type, "title": n.title, "widgets": n.widgets,
                           "links": {k: list(v) for k, v in n.links.items()}, "column": columns[n.id]}
                          for n in self.nodes]}


def sdxl_checkpoint(w: Workflow) -> Node:
    return w.add("CheckpointLoaderSimple", ckpt_name=SDXL_CHECKPOINT)


def flux_loaders(w: Workflow) -> tuple[Node, Node, Node]:
    unet = w.add("UNETLoader", unet_name=FLUX_UNET, weight_dtype="default")
    clip = w.add("DualCLIPLoader", clip_name1=FLUX_CLIP_L, clip_name2=FLUX_T5, type="flux", device="default")
    vae = w.add("VAELoader", vae_name=FLUX_VAE)
    return unet, clip, vae


def chosen_one_full_loop() -> Workflow:
    w = Workflow("chosen_one_full_loop", """# The Chosen One — the whole loop in one node
1. **Load Checkpoint**: an SDXL checkpoint (`sd_xl_base_1.0.safetensors` in `models/checkpoints`).
2. **DINOv2**: put a transformers DINOv2 folder (`config.json` + `model.safetensors` of facebook/dinov2-large) in `models/dinov2/dinov2-large/`.
3. **The Chosen One**: describe the character in `prompt`; `init_word` is a one-token word the new token starts from (man, woman, cat…); `name` names the run, the LoRA and the embedding.
   * preset `fast`: 32 proposals × 20 steps, 3 rounds at most (≈ 15–25 min on a 24 GB GPU at 1024²).
   * preset `paper`: the published recipe, 128 proposals × 35 steps, up to 5 rounds (≈ 1–2 h).
   * `scenes`, one per line: proposals cycle through them and the training captions repeat them, so the token learns the character, not a background. Clear it for the published recipe.
   Each round is saved in `output/protagonist_runs/<name>`; queue again to resume after an interrupt.
4. The result is applied to MODEL/CLIP; write `embedding:<name>` in any prompt. Files: `models/loras/<name>.safetensors`, `models/embeddings/<name>.safetensors`.
5. The picture is drawn as the benchmark draws: the loop's `lora_hooks` go through **Cond Pair Set Props** onto the prompt pair, and the KSampler samples the Load Checkpoint MODEL, so with `fast` the LoRA draws only the noisiest 83 % of the noise levels (more consistent in our measurements). To keep the LoRA on every step, or to chain other model nodes after it, sample the loop's MODEL output instead.
Out of memory? Lower width/height to 768 or use the one-round workflow with a smaller batch_size.""")
    ckpt = sdxl_checkpoint(w)
    loop = w.add("Protagonist_ChosenOneLoop", model=ckpt[0], clip=ckpt[1], vae=ckpt[2],
                 prompt="a photo of a 50 years old man with curly hair, studio lighting", init_word="man",
                 identity_prompt="a photo of {}", preset="fast",
                 scenes="on a city street\nin a forest\non a beach\nin a kitchen\nin the snow\nin an office",
                 dinov2=DINOV2, name="hero", width=1024, height=1024,
                 seed=0, control_after_generate="fixed", overwrite=False)
    w.add("PreviewImage", images=loop[3])
    w.add("PreviewAny", source=loop[4])
    positive = w.add("CLIPTextEncode", clip=loop[1], text="a photo of embedding:hero man walking in the snow")
    negative = w.add("CLIPTextEncode", clip=loop[1], text=NEGATIVE)
    gated = w.add("PairConditioningSetProperties", positive_NEW=positive[0], negative_NEW=negative[0], strength=1.0,
                  set_cond_area="default", hooks=loop[5])
    latent = w.add("EmptyLatentImage", width=1024, height=1024, batch_size=1)
    sampler = w.add("KSampler", model=ckpt[0], positive=gated[0], negative=gated[1], latent_image=latent[0],
                    seed=1, control_after_generate="fixed", steps=30, cfg=7.5, sampler_name="dpmpp_2m",
                    scheduler="karras", denoise=1.0)
    decode = w.add("VAEDecode", samples=sampler[0], vae=ckpt[2])
    w.add("SaveImage", images=decode[0], filename_prefix="protagonist/hero")
    return w


def chosen_one_one_round() -> Workflow:
    w = Workflow("chosen_one_one_round", """# The Chosen One — one round as separate nodes
Proposal Sampler → DINOv2 Embed → K-Means Cohesive Cluster → LoRA + Token Trainer → sampling with the token.
* **Load Checkpoint**: SDXL (`sd_xl_base_1.0.safetensors`). **DINOv2**: `models/dinov2/dinov2-large/`.
* The published recipe: 128 proposals × 35 steps at CFG 7.5, K = 6 clusters, clusters of more than 10, 500 training steps at lr 3e-5, LoRA rank 4.
* `batch_size` of the proposal sampler: 4 fits 24 GB at 1024²; lower it if you run out of memory.
* Look at the chosen cluster before training; change the seed or K if it is not one character.
* The trainer writes `models/loras/<name>` and `models/embeddings/<name>`; prompts then use `embedding:<name>`.
Time at 1024² on a 24 GB GPU: proposals ≈ 10 min, training ≈ 5 min.""")
    ckpt = sdxl_checkpoint(w)
    proposals = w.add("Protagonist_ProposalSampler", model=ckpt[0], clip=ckpt[1], vae=ckpt[2],
                      prompt="a photo of a 50 years old man with curly hair, studio lighting", negative=NEGATIVE,
                      count=128, seed=0, control_after_generate="fixed", steps=35, cfg=7.5, sampler="euler",
                      width=1024, height=1024, batch_size=4)
    embed = w.add("Protagonist_DINOv2Embed", images=proposals[0], dinov2=DINOV2, resolution=0)
    cluster = w.add("Protagonist_KMeansCohesiveCluster", embeddings=embed[0], images=proposals[0], clusters=6,
                    min_cluster_size=11, metric="euclidean", seed=0, control_after_generate="fixed")
    w.add("PreviewImage", images=cluster[0])
    w.add("PreviewAny", source=cluster[2])
    trainer = w.add("Protagonist_LoraTITrainer", model=ckpt[0], clip=ckpt[1], vae=ckpt[2], images=cluster[0],
                    name="hero_round1", init_word="man", steps=500, batch_size=1, rank=4, alpha=4.0, lora_lr=3e-5,
                    token_lr=3e-5, seed=0, control_after_generate="fixed", overwrite=False)
    w.add("PreviewImage", images=trainer[4])
    samples = w.add("Protagonist_ProposalSampler", model=trainer[0], clip=trainer[1], vae=ckpt[2],
                    prompt="a photo of embedding:hero_round1 man reading in a library", negative=NEGATIVE, count=4,
                    seed=100, control_after_generate="fixed", steps=35, cfg=7.5, sampler="euler", width=1024,
                    height=1024, batch_size=4)
    w.add("SaveImage", images=samples[0], filename_prefix="protagonist/hero_round1")
    return w


def oneactor_tune_generate() -> Workflow:
    w = Workflow("oneactor_tune_generate", """# OneActor — tune on one proposal, then generate
1. Right-click the proposals' *Preview Image* → **Queue Selected Output Nodes** to see the 11 proposals; set `target_index` to the one you like (0-based).
2. Queue again: the projector tunes for 200 steps (≈ 3–5 min on a 24 GB GPU; the UNet stays frozen), the identity is saved to `models/protagonist/oneactor_identity.safetensors`, and the sampler draws it in new prompts.
* Every prompt must contain the `base_word` (here *man*).
* Recommended for SDXL: 11 proposals × 30 steps, η1 = 8, η2 = 1, v = 0.8, cluster share 0.67, CFG 7.5.
* η2 = 0 makes sampling as cheap as plain CFG; lower v for more variety, raise it for more consistency.
Use the saved identity with **Load OneActor Identity** (e.g. in the storyboard workflow).""")
    ckpt = sdxl_checkpoint(w)
    proposals = w.add("Protagonist_ProposalSampler", model=ckpt[0], clip=ckpt[1], vae=ckpt[2],
                      prompt="a photo of a man with a red scarf", negative=NEGATIVE, count=11, seed=0,
                      control_after_generate="fixed", steps=30, cfg=7.5, sampler="euler", width=1024, height=1024,
                      batch_size=4)
    w.add("PreviewImage", images=proposals[0])
    trainer = w.add("Protagonist_OneActorProjectorTrainer", model=ckpt[0], clip=ckpt[1], latents=proposals[1],
                    features=proposals[2], target_index=0, base_word="man", steps=200, aux_per_batch=3, lr=1e-4,
                    seed=0, control_after_generate="fixed")
    w.add("PreviewImage", images=trainer[1])
    w.add("Protagonist_SaveOneActorIdentity", identity=trainer[0], name="oneactor_identity", overwrite=True)
    images = w.add("Protagonist_OneActorSampler", model=ckpt[0], clip=ckpt[1], vae=ckpt[2], identity=trainer[0],
                   prompt="a photo of a man with a red scarf in the snow\na photo of a man with a red scarf on a beach\n"
                          "a photo of a man with a red scarf reading in a cafe", negative=NEGATIVE, seed=1,
                   control_after_generate="fixed", steps=30, sampler="euler", width=1024, height=1024,
                   eta_target=8.0, eta_aux=1.0, semantic_scale=0.8, cluster_fraction=0.67, cfg=7.5)
    w.add("SaveImage", images=images[0], filename_prefix="protagonist/oneactor")
    return w


def dsd_two_frame_generation() -> Workflow:
    w = Workflow("dsd_two_frame_generation", """# Diffusion Self-Distillation — a new picture of the subject in a reference image
* **Load Diffusion Model**: your FLUX.1-dev (`flux1-dev.safetensors` in `models/diffusion_models`); **DualCLIPLoader**: `clip_l.safetensors` + `t5xxl_fp16.safetensors` (type flux); **Load VAE**: `ae.safetensors`.
* **Load DSD Weights**: the small file made by `python -m protagonist dsd convert` from the released DSD transformer and LoRA (put it in `models/protagonist/`). FLUX itself is not loaded twice.
* **Load Image**: the reference (the subject to keep); it is resized to `side` × `side`.
* Recommended: 512 px frames, 28 steps, FLUX guidance 3.5, cfg 1 (the negative is then unused).
* Memory: FLUX.1-dev needs about 24 GB at fp16 (use weight_dtype fp8_e4m3fn on 16 GB cards). ≈ 30 s per image on a 24 GB GPU.""")
    unet, clip, vae = flux_loaders(w)
    reference = w.add("LoadImage", image=REFERENCE_IMAGE, upload="image")
    dsd = w.add("Protagonist_LoadDSD", file=DSD_FILE)
    text = w.add("CLIPTextEncode", clip=clip[0], text="the same character, reading a book in a sunny park, photo")
    positive = w.add("FluxGuidance", conditioning=text[0], guidance=3.5)
    negative = w.add("ConditioningZeroOut", conditioning=text[0])
    frame = w.add("Protagonist_TwoFrameDiTSampler", model=unet[0], vae=vae[0], dsd=dsd[0], reference=reference[0],
                  positive=positive[0], negative=negative[0], seed=0, control_after_generate="fixed", steps=28,
                  image_guidance=1.0, text_guidance=1.0, sampler_name="euler", scheduler="simple", side=512, whole_canvas=False)
    w.add("SaveImage", images=frame[0], filename_prefix="protagonist/dsd")
    return w


def dsd_pair_mining() -> Workflow:
    w = Workflow("dsd_pair_mining", """# Diffusion Self-Distillation — mining identity pairs from 2×2 grids
FLUX draws 2×2 grids of one subject; the splitter cuts them into panels and every ordered (reference, target) pair of a grid; DINOv2 keeps the pairs whose panels look alike.
* Models: FLUX.1-dev as in the two-frame workflow; DINOv2 in `models/dinov2/dinov2-large/`.
* Recommended: 1024² grids (512² panels), 28 steps, FLUX guidance 3.5, threshold 0.8 (raise it for stricter identity).
* The kept references and targets are saved side by side in order (`dsd_pairs/reference_*`, `dsd_pairs/target_*`). For a training set with prompts and resumable runs use `python -m protagonist dsd make-pairs` (see the README).
* Memory: as FLUX; lower the grid batch if you run out. ≈ 1 min per grid on a 24 GB GPU.""")
    unet, clip, vae = flux_loaders(w)
    text = w.add("CLIPTextEncode", clip=clip[0], text=(
        "a 2x2 grid of the same red-haired woman in a green coat: reading in a cafe; walking on a beach; "
        "riding a bicycle in a city; standing in the snow"))
    positive = w.add("FluxGuidance", conditioning=text[0], guidance=3.5)
    negative = w.add("ConditioningZeroOut", conditioning=text[0])
    latent = w.add("EmptySD3LatentImage", width=1024, height=1024, batch_size=2)
    sampler = w.add("KSampler", model=unet[0], positive=positive[0], negative=negative[0], latent_image=latent[0],
                    seed=0, control_after_generate="increment", steps=28, cfg=1.0, sampler_name="euler",
                    scheduler="simple", denoise=1.0)
    grids = w.add("VAEDecode", samples=sampler[0], vae=vae[0])
    split = w.add("Protagonist_GridPairSplitter", grids=grids[0], rows=2, cols=2, detect_gutters=False)
    embed = w.add("Protagonist_DINOv2Embed", images=split[0], dinov2=DINOV2, resolution=0)
    kept = w.add("Protagonist_PairFilter", panels=split[0], embeddings=embed[0], pairs=split[3], threshold=0.8, judge="")
    w.add("SaveImage", images=kept[0], filename_prefix="dsd_pairs/reference")
    w.add("SaveImage", images=kept[1], filename_prefix="dsd_pairs/target")
    w.add("PreviewAny", source=kept[2])
    return w


STORY = ["a photo of a man with a red scarf standing in a train station, morning light",
         "a photo of a man with a red scarf walking through a rainy street at night",
         "a photo of a man with a red scarf waving from a mountain top",
         "a photo of a man with a red scarf sitting in a cosy cafe"]


def storyboard() -> Workflow:
    w = Workflow("storyboard", """# Storyboard — one character in four posed panels, on one page
* **Load Checkpoint**: the SDXL checkpoint the identity was tuned on (`sd_xl_base_1.0.safetensors`).
* **Load OneActor Identity**: made by the *oneactor_tune_generate* workflow (`models/protagonist/oneactor_identity.safetensors`).
* **Load ControlNet Model**: an SDXL OpenPose ControlNet (e.g. `OpenPoseXL2.safetensors` from thibaud/controlnet-openpose-sdxl-1.0 in `models/controlnet`).
* **Load Image** ×4: OpenPose skeletons; copy `workflows/poses/*.png` of this pack into `ComfyUI/input`, or use your own.
* Each panel: a prompt (must contain the identity's base word, *man*) → ControlNet → OneActor Cluster Guider → SamplerCustomAdvanced. All panels share seed, sampler and schedule.
* Recommended: 1024², 30 steps, η1 = 8, η2 = 1, v = 0.8, cluster share 0.67, CFG 7.5, ControlNet strength 0.8.
* Time: ≈ 4 × 25 s on a 24 GB GPU (cluster guidance costs 3 UNet passes per step in the first two thirds).
The page is assembled with the stock Image Stitch node (2 × 2).""")
    ckpt = sdxl_checkpoint(w)
    identity = w.add("Protagonist_LoadOneActorIdentity", file=IDENTITY_FILE)
    controlnet = w.add("ControlNetLoader", control_net_name=OPENPOSE_SDXL)
    negative = w.add("CLIPTextEncode", clip=ckpt[1], text=NEGATIVE)
    noise = w.add("RandomNoise", noise_seed=7, control_after_generate="fixed")
    sampler = w.add("KSamplerSelect", sampler_name="euler")
    sigmas = w.add("BasicScheduler", model=ckpt[0], scheduler="normal", steps=30, denoise=1.0)
    latent = w.add("EmptyLatentImage", width=1024, height=1024, batch_size=1)
    panels = []
    for index, (text, pose_file) in enumerate(zip(STORY, POSE_IMAGES), start=1):
        prompt = w.add("PrimitiveStringMultiline", title=f"Panel {index} prompt", value=text)
        pose = w.add("LoadImage", title=f"Panel {index} pose", image=pose_file, upload="image")
        positive = w.add("CLIPTextEncode", clip=ckpt[1], text=prompt[0])
        posed = w.add("ControlNetApplyAdvanced", positive=positive[0], negative=negative[0], control_net=controlnet[0],
                      image=pose[0], strength=0.8, start_percent=0.0, end_percent=1.0)
        guider = w.add("Protagonist_ClusterGuidedSampler", model=ckpt[0], clip=ckpt[1], identity=identity[0],
                       prompt=prompt[0], negative=posed[1], positive=posed[0], eta_target=8.0, eta_aux=1.0,
                       semantic_scale=0.8, cluster_fraction=0.67, cfg=7.5)
        sample = w.add("SamplerCustomAdvanced", noise=noise[0], guider=guider[0], sampler=sampler[0], sigmas=sigmas[0],
                       latent_image=latent[0])
        image = w.add("VAEDecode", samples=sample[0], vae=ckpt[2])
        w.group(f"Panel {index}", [prompt, pose, positive, posed, guider, sample, image])
        panels.append(image)
    stitch = {"match_image_size": True, "spacing_width": 16, "spacing_color": "white"}
    top = w.add("ImageStitch", image1=panels[0][0], image2=panels[1][0], direction="right", **stitch)
    bottom = w.add("ImageStitch", image1=panels[2][0], image2=panels[3][0], direction="right", **stitch)
    page = w.add("ImageStitch", title="Storyboard page", image1=top[0], image2=bottom[0], direction="down", **stitch)
    w.add("SaveImage", images=page[0], filename_prefix="protagonist/storyboard")
    return w


WORKFLOWS = {"chosen_one_full_loop": chosen_one_full_loop, "chosen_one_one_round": chosen_one_one_round,
             "oneactor_tune_generate": oneactor_tune_generate, "dsd_two_frame_generation": dsd_two_frame_generation,
             "dsd_pair_mining": dsd_pair_mining, "storyboard": storyboard}
