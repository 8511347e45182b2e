"""Every sentence the explorer shows about what a panel means, in one place.

Each is a claim about the code beside it; tests/test_texts.py checks the numeric ones.
"""

HEADER = """# RvT Lens
What a **Rotary Vision Transformer** looks at, and what its rotary position embedding does. Upload an image
or pick an example. The prediction, its novelty notice and the Attention, Rollout, Head statistics and Rotary panels
come from **one model pass** per image; gradient rollout, attributions, the faithfulness scorecard, what-if,
the Rotary lab's band switch-off and resolution sweep, and export run further passes when you ask for them.
The Rotary lab needs no image; the Scenes tab runs its own scene models."""

ATTENTION = """**Attention.** Each tile is one head of the chosen layer, over what the model sees (the preprocessed
input shown under the upload). Bright patches are where the **CLS token** (the summary the classifier reads)
takes information from. Click a patch on the single-head view to see where *that patch* looks instead.
Heads that attend to nearby patches show a bright spot around the query; heads that look everywhere are
smooth. The bottom grid shows every layer and head at once, each scaled to its own maximum."""

ROLLOUT = """**Attention rollout** follows information through all layers: each layer's attention (heads fused by
mean, max or min), plus the identity for the residual connection, rows renormalised, multiplied from the
first layer to the last. It shows how attention mixes tokens and is **class-agnostic**: it ignores the
classifier, so it barely changes when the classifier's weights are randomised, and it does not say what
drives the prediction. **Gradient rollout** weights each attention map by its gradient for one class
(positive part only, heads fused the same way) and needs one backward pass per class. Discarding the
weakest attention weights sharpens either map."""

STATS = """**Head statistics.** *Mean attention distance*: how far, in pixels, a head's patch queries look on
average (the ViT paper's Figure 7); low means local, like a convolution; the dashed line is what uniform
attention would give. *Entropy*: how spread out each attention row is (0 = all on one token).
*Share on CLS*: the fraction of the patches' attention that goes to the CLS token."""

ROTARY = """**Rotary embedding.** RvT has no position vectors: it *rotates* each pair of query and key dimensions
by an angle proportional to the patch's row (first half of each head's dimensions) or column (second half),
so q·k depends on the *offset* between patches. The CLS token is not rotated.
*Kernel*: for the query patch, the similarity rotary alone gives when q = k is spread evenly over the rotated pairs (an
idealisation), then this head's real q·k without and with the rotation, and the change. Its plus shape comes from the
axial split: row pairs ignore the column offset and column pairs the row offset. Pick the query by clicking a
patch on the Attention tab; the layer and head come from there too.
*Step per patch*: the angle between neighbouring patches, as set (light bars, orange above pi) and as seen after
wrapping to [0, pi] (dark bars); black ticks mark the step at the training grid when this image's grid differs.
Above pi a band **aliases**: its wrapped step is smaller, so neighbours look closer than they are and far patches
can look like neighbours. *Phase*: each band's angle over the grid on a colour wheel (once round the colours =
one full turn), labelled with its step, unwrapped → wrapped."""

NO_ROTARY = """**This model has no rotary embedding** (`use_rotary=False`): queries and keys are not rotated, so
there are no frequency bands or rotary kernels to show. Its only position information comes from the
depthwise-conv queries, which see where a patch is through the zero padding at the borders."""

ATTRIBUTIONS = """**Attributions** (captum) score each input pixel for the chosen class. *Integrated Gradients*
integrates gradients along a straight path from a **baseline** image to the input; its scores add up to
the class logit at the input minus the logit at the baseline (up to the integration error). *Saliency* is
the plain gradient. *Occlusion* replaces windows with the baseline and records the drop in the class
score. *GradientShap* averages gradients from random points between baselines and the input.
*SmoothGrad* averages any of them over 8 noisy copies; with Integrated Gradients the copies share the
path's points (each takes every 8th), so it takes as many gradients as Integrated Gradients alone (the
steps rounded up to a multiple of 8, at least 16). The note under the pictures names the baseline used."""

FAITHFULNESS = """**Faithfulness: which map can be trusted for this image.** Every kind of map the app draws,
at the scorecard's own settings (attention rollout with each head fusion, gradient rollout, the last layer's
CLS attention averaged over heads, Integrated Gradients with 16 steps, Saliency, Occlusion, GradientShap,
SmoothGrad over Saliency), plus SmoothGrad squared and VarGrad (two more noise-tunnel reductions) and a random
patch order as the floor, scored for the chosen class. *Deletion*: patches replaced by the fill in the map's
order, most important first; the class probability should fall fast (lower area is better). *Insertion*:
patches put back onto the fill in that order (higher area is better). *Randomisation check* (Adebayo et al.
2018): the model's weights are re-initialised from the classifier head down, one stage at a time, and each map
is compared with the trained model's by Spearman rank correlation; a map that stays the same explains the
input, not the model, and fails. *Infidelity* and *sensitivity* come from `captum.metrics`. The metrics can
disagree: read the columns together. Scoring runs further model passes, with progress and Cancel; a second
look at the same image, class and fill is served from a cache."""

FAITHFULNESS_RESULT = """Scored for **{label}** ({timing}); fill: {fill}; attribution baseline: {baseline}.
Failing the randomisation check: {failing} (the random floor fails it by construction: its order is fixed)."""

WHATIF = """**What-if.** Switch off heads (their output is zeroed before the output projection) or the rotary
rotation in some layers, re-run, and compare with the original prediction and attention. A large change
means the model relies on them. Switching rotary off does **not** remove all position information: the
depthwise-conv queries still see position through the zero padding at the borders."""

SCENES = """**Scenes: a task where position is the answer.** A red and a blue object and a few distractors;
the class is where the red object sits relative to the blue one. Three RvT models were trained on these
scenes, identical except for where position can come from: *rotary + conv queries*, *conv queries only*
(position only through the conv queries' 5x5 neighbourhood and zero padding) and *no position*, which sees a
set of patches and so stays at chance (25%). Move the objects with the sliders or by clicking the scene, add
or remove distractors, draw a new random scene (from the test seed, never seen in training), switch models,
and render at the training size, zoomed (the same scene larger) or extended (the same objects on a larger
canvas): rotary angles measure offsets as a share of the image, so the rotary model survives zoom but not
extend, and the conv-only model the other way round (accuracies in `assets/SCENES_MODEL_CARD.md`)."""

SCENES_METHODS = """**Scored against the truth** (CLEVR-XAI's measures, for the predicted class): *mass* is
the share of the map's positive relevance inside the red and blue objects' masks, *rank accuracy* the share of
the K most relevant pixels inside them (K = the masks' size). A uniform map scores the masks' area share on
both, the random patch order about the same. The table above scores the attention maps on every edit; the
button below scores every method of the Faithfulness tab on this scene. *Heads with a job*: each head's
attention mass on the key objects over 200 test scenes, and the accuracy with the two most object-focused
heads silenced, against the two least focused and two random heads."""

SCENE_TRUTH = """Truth: **{truth}**; the model's top class ({top}, {p:.0%}) is {verdict}. Distractors: {distractors}."""

SCENE_ALL_METHODS = """Every method on this scene, **{model}** (best real method in bold):"""

SCENE_SILENCING = """**{model}**: silencing the {k} heads with the most mass on the key objects, the {k} with the
least, and {k} random heads (mean of 5 draws). Where the top heads matter less than random ones, the
task is spread over many heads:"""

EXPORT = """**Export** writes every panel as PNG, a `summary.json` (prediction, per-head statistics, aliasing
bands, the faithfulness scorecard under `"faithfulness"`) and the captured tensors (`tensors.npz`:
attention, rotary tables, q/k) into one zip. It runs further passes for gradient rollout, the
attributions and the scorecard, with progress, and can be cancelled."""

MODEL = """Load the bundled checkpoint, your own (`.safetensors` from this project, or a `vit-pytorch` RvT
`state_dict` saved with `torch.save` as `.pt`/`.pth`), or an untrained RvT of a chosen size. A checkpoint
is checked against the server's limits before anything is allocated."""

RESOLUTION = """Rotary embeddings have no fixed table, so the same model runs at other sizes (multiples of the
patch size, non-square too), up to the largest this server allows."""

NO_IMAGE_HINT = "Model loaded. Upload an image or pick an example to see its analysis."

QUERY_CLS = "Query: CLS token"


def query_text(row: int, col: int) -> str:
    return f"Query patch: row {row}, column {col} (click another patch, or reset to CLS)"

LAB = """**Rotary lab.** Change the frequency schedule, the patch grid and the head size and watch what rotary
does, with no image and no model pass. *RvT* (vit-pytorch) places the patches at positions from -1 to 1 along
each axis and turns band b by linspace(1, max_freq / 2, dim_head / 4)[b] · π per unit of position; RvT sets
max_freq to the training image size. *RoPE axial* (as in RoPE-ViT) uses integer patch positions and turns band
i by base^(-4i / dim_head) rad per patch. In both, dim_head / 4 bands follow the row and as many the column.
*RoPE-Mixed* turns every pair along its own direction in the (row, column) plane: half along a random (seeded)
direction, half along the perpendicular one, as RoPE-ViT initialises it. *This model's own* reads the scales
stored in the loaded model.

The figures: each band's angle over the grid (the colour wheel wraps at 2π), the
step per patch before and after wrapping against π, and the relative-position kernel for q = k spread evenly
over the pairs (the mean of cos(angle difference)) with its cuts along the row, the column and the diagonal.

**Resolution**: with a training grid, a larger grid shrinks RvT's step per patch (its positions stay in
[-1, 1], so it interpolates), while RoPE's integer positions keep the step and reach angles never seen in
training (it extrapolates). Position interpolation, NTK-aware and YaRN scaling apply to the RoPE schedules
and change only a grid larger than the training grid."""

LAB_LESSON = "Pick a step: it sets the controls, the figures follow, and this box says what to look at."

LAB_MODEL = """**With an image: the loaded model.** *Head kernel*: for the layer and head chosen on the Attention
tab, the idealised kernel of the model's schedule at the analysed grid beside what rotation alone does to this
head's q and k (the query patch clicked there, or the mean patch query, against the mean key) and the head's
real mean score q_rot·k_rot/√d at each offset. *Band usage*: per layer and head, √(E|q_p|² · E|k_p|²) of each
rotated pair p as a share of the head's total. Following Barbero et al. 2024 ("Round and Round We Go"), a head is
called **positional** if at least 60% of its usage is on the faster half of the pairs (ranked by wrapped step at
this grid), **semantic** if at most 40%, and mixed otherwise."""

LAB_WHATIF = """**Switch bands off**: the chosen bands get the identity rotation in queries and keys in the chosen
layers, and the image runs again on a private copy of the model. The figure shows the top 5 before and after
and, per layer and head, how much the attention rows changed (total variation averaged over queries: 0 the
same, 1 disjoint)."""

LAB_SWEEP = """**Resolution sweep**: the upload resized so that its patch grid is 0.5x to 4x the training grid, one
pass per size, with progress; Cancel stops it before the next size. Per size: the top prediction, and per
layer the attention entropy as a share of its maximum log(1 + N) and the mean attention distance relative to
uniform attention's (both averaged over heads). The images are resized, so part of any change is the content's
scale, not rotary."""


def lab_model_note(schedule: str, grid: tuple[int, int], row: int, col: int, bands: int) -> str:
    return (f"Schedule: {schedule}. At the analysed {grid[0]}x{grid[1]} grid {row} of {bands} row bands and "
            f"{col} of {bands} column bands alias.")


def sweep_note(sweep: dict, too_large: list[float]) -> str:
    sizes = ", ".join(f"{r['grid'][0]}x{r['grid'][1]}" for r in sweep["rows"])
    skipped = [f"{s['grid'][0]}x{s['grid'][1]} ({s['reason']})" for s in sweep["skipped"]]
    skipped += [f"{s}x (larger than this server's largest side)" for s in too_large]
    return f"Swept grids {sizes}." + (f" Skipped: {'; '.join(skipped)}." if skipped else "")
