"""Overview: a background build's progress (the demo store `./run.sh` builds while the app runs), what the
chosen run is (model, hook, corpus, tokens), its dictionaries and their metrics, the fraction of each
dictionary's labels that hold on unseen contexts, and the log10 feature-density histogram of the chosen
dictionary."""

import math

import pandas as pd
import streamlit as st

from explorer import build_panel, components, data, state

build = build_panel.render()  # live while the demo store builds
building = bool(build) and build.get("state") == "running"
if building and not st.session_state.get(state.RUN):
    st.caption("The run appears here when its activations are cached; its first dictionary follows.")
    st.stop()
if build is None and not st.session_state.get(state.RUN):
    build_panel.watch()  # a build that starts now (./run.sh) redraws this page
run = state.require_run()
label = st.session_state.get("run_label") or run
st.title(f"Run {label}")

info = data.run_info(run)
corpus = str(info.get("corpus", "?"))
facts = {
    "Model": f"**{components.esc(components.model_label(info.get('model')))}**",
    "Hook point": f"`{info.get('hook', '?')}`",
    "Corpus": f"**{components.esc(corpus)}**",
    "Tokens": f"**{int(info.get('n_tokens', 0)):,}** ({info.get('n_seqs', '?')} contexts of {info.get('ctx_len', '?')}, BOS included)",
}
for col, (k, v) in zip(st.columns([2, 2, 3, 3]), facts.items()):
    col.caption(k)
    col.markdown(v, unsafe_allow_html=True)
extra = []
if info.get("source_counts"):
    groups: dict[str, int] = {}  # "brown:news" and "brown:fiction" count as "brown"
    for k, v in info["source_counts"].items():
        groups[str(k).split(":")[0]] = groups.get(str(k).split(":")[0], 0) + int(v)
    extra.append("contexts by source: " + ", ".join(f"{k} {v:,}" for k, v in sorted(groups.items(), key=lambda kv: -kv[1])))
if info.get("d_in"):
    extra.append(f"d_model {info['d_in']}")
if info.get("created"):
    extra.append(f"created {info['created']}")
if extra:
    st.caption(" · ".join(extra))

st.subheader("Dictionaries")
dicts = data.list_dictionaries(run)
if dicts.empty and building:
    st.info("The first dictionary is being trained; it appears here, browsable, as soon as it is analysed.",
            icon=":material/hourglass_top:")
    st.stop()
if dicts.empty:
    st.info("This run has no dictionary yet. Train and analyse one:", icon=":material/inbox:")
    st.code(f"python -m backend train --run {run} --kind relu-l1\npython -m backend analyze --run {run} --dict relu-l1", language="bash")
    st.stop()

METRICS = ["l0", "explained_variance", "dead_fraction", "ce_loss_score", "kl_div"]
cols = ["name", "architecture", "d_sae"] + [m for m in METRICS if m in dicts.columns] + (["analysed"] if "analysed" in dicts.columns else [])
st.dataframe(
    dicts[cols], hide_index=True, width="stretch",
    column_config={
        "name": "dictionary",
        "d_sae": st.column_config.NumberColumn("features", format="%d"),
        "l0": st.column_config.NumberColumn("L0", help="mean number of features firing per token", format="%.1f"),
        "explained_variance": st.column_config.NumberColumn("explained var.", help="1 - FVU on held-out tokens", format="%.3f"),
        "dead_fraction": st.column_config.NumberColumn("dead", help="fraction of features that never fired in the window", format="%.3f"),
        "ce_loss_score": st.column_config.NumberColumn("CE loss score", help="(CE_zero_abl - CE_spliced) / (CE_zero_abl - CE_clean)", format="%.3f"),
        "kl_div": st.column_config.NumberColumn("KL div", help="KL(clean || spliced) per token, nats", format="%.4f"),
    },
)

# labels that hold on unseen contexts (python -m backend score), comparable across dictionaries scored alike
held = []
for name in dicts["name"]:
    for scorer, sm in (data.label_scores(run, name).get("scorers") or {}).items():
        held.append({"dictionary": name, "scorer": scorer, "hold": sm.get("fraction_hold"), "n_scored": sm.get("n_scored"),
                     "mean_f1": sm.get("mean_f1"), "mean_accuracy": sm.get("mean_accuracy"),
                     "shuffled": (sm.get("shuffled_baseline") or {}).get("fraction_hold"),
                     "rule": f"F1 >= {sm.get('threshold')} on {sm.get('n_per_class')}+{sm.get('n_per_class')} held-out contexts"
                             + (" (sample)" if sm.get("sampled") else ""),
                     "seconds": sm.get("seconds"), "when": sm.get("created")})
st.subheader("Labels that hold on unseen contexts")
if held:
    st.dataframe(
        pd.DataFrame(held), hide_index=True, width="stretch",
        column_config={
            "hold": st.column_config.ProgressColumn("labels that hold", format="percent", min_value=0.0, max_value=1.0,
                                                    help="fraction of scored labels whose detection F1 reaches the threshold"),
            "n_scored": st.column_config.NumberColumn("labels scored", format="%d"),
            "mean_f1": st.column_config.NumberColumn("mean F1", format="%.3f"),
            "mean_accuracy": st.column_config.NumberColumn("mean accuracy", format="%.3f", help="0.5 is chance on the balanced set"),
            "shuffled": st.column_config.NumberColumn("hold, labels shuffled", format="percent",
                                                      help="the same labels given to other features (bench/bench_label_scoring.py): what the scorer grants by chance"),
            "rule": st.column_config.TextColumn("holds when"),
            "seconds": st.column_config.NumberColumn("time (s)", format="%.0f"),
        },
    )
elif building:
    st.caption("The build explains each dictionary's features and scores a sample of the labels right after its analysis.")
else:
    st.caption("No label has been scored yet. Explain features, then score the labels on held-out contexts:")
    st.code(f"python -m backend explain --run {run} --dict {dicts['name'].iloc[0]}\n"
            f"python -m backend score --run {run} --dict {dicts['name'].iloc[0]}", language="bash")

d = st.session_state.get(state.DICT)
if not d:
    st.stop()
row = dicts[dicts["name"] == d].iloc[0]
st.subheader(f"Dictionary {d}")
metrics = data.dictionary_metrics(run, d)
m = st.columns(len(METRICS))
for col, key in zip(m, METRICS):
    v = metrics.get(key, row.get(key))
    shown = "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else (f"{v:.3f}" if isinstance(v, float) else str(v))
    col.metric(key, shown)
notes = []
if metrics.get("n_tokens"):
    notes.append(f"metrics on {int(metrics['n_tokens']):,} {metrics.get('split', 'held-out')} tokens")
if metrics.get("dead_window_tokens"):
    notes.append(f"dead = no firing in {int(metrics['dead_window_tokens']):,} tokens ({metrics.get('dead_window_split', '')})")
if metrics.get("ce_tokens"):
    notes.append(f"CE metrics on {int(metrics['ce_tokens']):,} tokens")
if notes:
    st.caption(" · ".join(notes))

if "analysed" in dicts.columns and not bool(row["analysed"]) and building:
    st.info(f"Dictionary {d} is trained; the build is measuring and analysing it. It becomes browsable (this page "
            "redraws) as soon as its analysis is written.", icon=":material/hourglass_top:")
    st.stop()
if "analysed" in dicts.columns and not bool(row["analysed"]):
    st.info(f"Dictionary {d} is not analysed yet, so there are no feature densities. Run "
            f"`python -m backend analyze --run {run} --dict {d}`.", icon=":material/inbox:")
    st.stop()
dens = data.feature_densities(run, d)
st.plotly_chart(components.density_histogram(dens), width="stretch", config={"displaylogo": False})
