"""Faithfulness of feature explanations against token saliency: ERASER's comprehensiveness and sufficiency.

    python -m backend faithfulness --run R --dict D --task T       # -> <run>/faithfulness/<dict>/<task>.parquet

For each multiple-choice item (the task suite's items and scoring), features are ranked by their attribution to the
correct choice (attribution patching, backend/attribution/features.py) and tokens by integrated gradients
(backend/attribution/integrated_gradients.py); then, for q in {1, 5, 10, 20, 50}% (DeYoung et al. 2020, "ERASER"):

    comprehensiveness(q) = p(y|x) - p(y | x with the top q% removed)      high = the rationale was needed
    sufficiency(q)       = p(y|x) - p(y | x with only the top q% kept)    low  = the rationale was enough
    AOPC                 = the mean over the q's (area over the perturbation curve)

with random features and random tokens (same counts) as baselines, and the accuracy when the top 5% are removed
(AnchorX, Shah 2025: 27.4 points for SAE features against 11.8 for IG). Modules: selection (what is removed at each
q), measure (one item's passes), evaluate (the tasks, the CLI options, the token side cached per task), store
(Parquet + summary.json and reading them back), plots (the AOPC chart and the ablation drop, Plotly).
"""
