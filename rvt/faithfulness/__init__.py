"""Which map can be trusted: sanity checks and faithfulness metrics for every explanation method.

    card = scorecard(bundle.model, x, None, bundle.preprocess)  # x: normalised (1, C, H, W)
    card.row("Integrated Gradients")  # deletion/insertion AUC, randomisation, infidelity, sensitivity
    card.summary()  # what the export writes under "faithfulness"

`python -m rvt.faithfulness --count 200` averages the scorecard over Fashion-MNIST test images.
"""
from .curves import FILLS, Curves, deletion_insertion
from .methods import ALL_METHODS, ATTENTION_METHODS, RANDOM, SMOOTHGRAD, Explainer, MapSettings, explain
from .metrics import infidelity_scores, sensitivity_scores
from .randomization import RULE, Randomization, randomization_check, randomized_cascade, spearman
from .scorecard import CAVEAT, NOTES, READING, FaithfulnessConfig, Scorecard, clear_caches, method_note, scorecard

__all__ = ["ALL_METHODS", "ATTENTION_METHODS", "CAVEAT", "FILLS", "NOTES", "RANDOM", "READING", "RULE",
           "SMOOTHGRAD", "Curves", "Explainer", "FaithfulnessConfig", "MapSettings", "Randomization", "Scorecard",
           "clear_caches", "deletion_insertion", "explain", "infidelity_scores", "method_note", "randomization_check",
           "randomized_cascade", "scorecard", "sensitivity_scores", "spearman"]
