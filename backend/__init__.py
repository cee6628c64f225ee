"""Backend of the feature explorer: activations -> dictionaries -> analysed Parquet stores.

No Streamlit import anywhere in this package; the explorer app calls into it.
"""
