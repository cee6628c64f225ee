"""The feature page's "fires on" panel: the POS tags and sources a feature's firing tells apart, with their NMI.

From the evaluation suite's feature_tags.parquet (`python -m backend evaluate --only nmi`): per category, the
tags whose indicator has the highest normalised mutual information with the feature's firing on the sampled
tokens (1 = it fires on exactly the tokens of that tag; backend/evalsuite/monosemanticity.py).
"""

from __future__ import annotations

import streamlit as st

from explorer import components, data

TITLES = {"pos": "part of speech", "source": "source"}


def render(run: str, d: str, feature: int) -> None:
    tags = data.feature_tags(run, d, feature)
    st.markdown("**Fires on** (NMI with each tag)")
    if tags.empty:
        st.caption(f"Not measured: `python -m backend evaluate --run {run} --dict {d} --only nmi` (a dead feature has none).")
        return
    tables = []
    for cat, g in list(tags.groupby("category", sort=True))[:2]:
        rows = "".join(f"<tr><td>{components.esc(str(t))}</td><td style='text-align:right'>{float(v):.3f}</td></tr>"
                       for t, v in zip(g["tag"], g["nmi"]))
        tables.append(f"<table style='font-size:0.85em'><tr><th>{TITLES.get(cat, components.esc(cat))}</th><th>NMI</th></tr>"
                      f"{rows}</table>")
    st.html(components.side_by_side(*tables, *[""] * (2 - len(tables))))  # two columns, as many as before
