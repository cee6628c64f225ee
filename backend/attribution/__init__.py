"""Attribution of one prediction to dictionary features (attribution patching) and to input tokens (integrated gradients, occlusion).

    from backend.attribution import attribute_prompt
    a = attribute_prompt(lm, dictionary, "blocks.15.hook_resid_post", "The capital of France is", target="Paris")
    a.pairs     # one row per active (feature, position): activation, gradient, attribution, exact effect (top N)
    a.ig        # one row per prompt token: integrated-gradients attribution, with the completeness check in a.ig_check

A prediction is a metric of the log-probabilities of one or more continuations after a prompt (targets.py):
the log-probability of a target, the difference between a target and a contrast, or the probability of the
correct choice of a multiple-choice item normalised over its choices (the task suite's scoring). The prompt
and the continuations run as one packed row with a tree attention mask (backend/tasks/scoring.py), so the
prompt is run once. Modules: targets (the packed row and the metric), features (attribution patching and
batched feature ablations from the hook), integrated_gradients (IG over input embeddings and token removal),
occlusion (leave-one-out token scores: exact for single-token removal, no path), prompt (both for one typed prompt, for the app and `python -m backend attribute`).
"""

from backend.attribution.prompt import PromptAttribution, attribute_prompt

__all__ = ["PromptAttribution", "attribute_prompt"]
