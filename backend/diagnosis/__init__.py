"""Diagnose a prompt: which tokens the model reads as another domain, a reformulation, and what it changes.

After Yang et al. 2025, "Exploring task performance with interpretable models via sparse auto-encoders"
(arXiv 2507.06427): for each token of a task prompt, the dictionary's top features and their labels; when
they belong to another domain than the task's, the prompt is reformulated, checked for equivalence, and the
model is run again.

    from backend.diagnosis.domains import compute_domains, load_domains
    compute_domains(run, "topk")                       # dictionaries/topk/domains.parquet + thresholds
    from backend.diagnosis.detect import diagnose_text
    diag = diagnose_text(lm, dictionary, hook, "What is 7 x 8?", load_domains(run, "topk"), "math")
    diag.flagged                                        # tokens above the domain's threshold, with their features

Modules: domains (feature domain distributions), calibrate (thresholds on held-out in-domain text), detect
(per-token out-of-domain mass and flags), rules + rules.toml (deterministic rewrites), equivalence (is it the
same question?), reformulate (rules or an LLM, checked), items (task items as prompts), experiment (conditions
a-d and the paired tests), report (files and chart), commands (the CLI's logic).
"""
