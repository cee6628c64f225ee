"""Stage 8, what the app reads: the DuckDB query layer over the analysed stores, and the label store (labels.duckdb) with export/import."""
