"""Every sentence the explorer shows about what a panel means, in one place.

Each is a claim about the code beside it; tests/test_texts.py checks the numeric ones.
"""

HEADER = """# RvT Lens
What a **Rotary Vision Transformer** looks at, and what its rotary position embedding does. Upload an image
or pick an example. The prediction and the Attention, Rollout, Head statistics and Rotary panels come from
**one model pass** per image; gradient rollout, attributions, what-if and export run further passes when you
ask for them."""

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
so q·k depends on the *offset* between patches. The CLS token is not rotated. *Bands*: cos of each band's
angle over the grid. *Step per patch*: the angle between neighbouring patches, as set (light bars, orange
above pi) and as seen after wrapping to [0, pi] (dark bars). Above pi a band **aliases**: its wrapped
step is smaller, so neighbours look closer than they are and far patches can look like neighbours.
*Kernel*: for the query patch, the similarity rotary alone gives when q = k is spread evenly over the rotated pairs (an
idealisation), then this head's real q·k without and with the rotation. Its plus shape comes from the
axial split: row pairs ignore the column offset and column pairs the row offset. Pick the query by clicking a
patch on the Attention tab; the layer and head come from there too."""

NO_ROTARY = """**This model has no rotary embedding** (`use_rotary=False`): queries and keys are not rotated, so
there are no frequency bands or rotary kernels to show. Its only position information comes from the
depthwise-conv queries, which see where a patch is through the zero padding at the borders."""

ATTRIBUTIONS = """**Attributions** (captum) score each input pixel for the chosen class. *Integrated Gradients*
integrates gradients along a straight path from a **baseline** image to the input; its scores add up to
the class logit at the input minus the logit at the baseline (up to the integration error). *Saliency* is
the plain gradient. *Occlusion* replaces windows with the baseline and records the drop in the class
score. *GradientShap* averages gradients from random points between baselines and the input.
*SmoothGrad* averages any of them over noisy copies. The figure's title names the baseline used."""

WHATIF = """**What-if.** Switch off heads (their output is zeroed before the output projection) or the rotary
rotation in some layers, re-run, and compare with the original prediction and attention. A large change
means the model relies on them. Switching rotary off does **not** remove all position information: the
depthwise-conv queries still see position through the zero padding at the borders."""

EXPORT = """**Export** writes every panel as PNG, a `summary.json` (prediction, per-head statistics, aliasing
bands) and the captured tensors (`tensors.npz`: attention, rotary tables, q/k) into one zip. It runs
further passes for gradient rollout and the attributions, with progress, and can be cancelled."""

MODEL = """Load the bundled checkpoint, your own (`.safetensors` from this project, or a `vit-pytorch` RvT
`state_dict` saved with `torch.save` as `.pt`/`.pth`), or an untrained RvT of a chosen size. A checkpoint
is checked against the server's limits before anything is allocated."""

RESOLUTION = """Rotary embeddings have no fixed table, so the same model runs at other sizes (multiples of the
patch size, non-square too), up to the largest this server allows."""

NO_IMAGE_HINT = "Model loaded. Upload an image or pick an example to see its analysis."

QUERY_CLS = "Query: CLS token"


def query_text(row: int, col: int) -> str:
    return f"Query patch: row {row}, column {col} (click another patch, or reset to CLS)"
