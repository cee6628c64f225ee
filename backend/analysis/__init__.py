"""Stage 7, analysis: every feature into Parquet stores (`analyze`), and the prompt inspector."""
