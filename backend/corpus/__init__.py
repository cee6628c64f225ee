"""Stage 1, text: corpus readers (folder, jsonl, parquet, hf:), licences of sources, the default corpus, tokenisation into contexts."""
