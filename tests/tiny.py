"""A tiny random Llama with a word-level tokenizer, saved as a local model folder.

Unit tests and the app tests run the real pipeline (cache -> train -> analyze) on it: it loads
through the same `from_pretrained` path as a hub model, with no download.
"""

from __future__ import annotations

import random
from pathlib import Path

GENRES = {
    "prose": [
        "the cat sat on the mat and the dog sat on the rug",
        "a quiet river ran past the old mill under a grey sky",
        "she read the letter twice and then put it in the drawer",
    ],
    "code": [
        "def add ( a , b ) : return a + b",
        "for i in range ( 10 ) : print ( i * 2 )",
        "x = [ 1 , 2 , 3 ] ; y = sum ( x ) / len ( x )",
    ],
    "math": [
        "3 + 4 = 7 and 7 * 2 = 14 so the answer is 14",
        "if 12 apples cost 6 dollars then 1 apple costs 0.5 dollars",
        "<script>alert(1)</script> and <b>bold</b> are literal tokens here",
    ],
}
SPECIALS = ["<unk>", "<bos>", "<eos>"]


def vocabulary() -> list[str]:
    words = sorted({w for texts in GENRES.values() for t in texts for w in t.split()})
    return SPECIALS + words


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>")


def make_tiny_model(folder: Path, n_layers: int = 4, d_model: int = 64, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    tok = make_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=d_model, intermediate_size=2 * d_model,
                      num_hidden_layers=n_layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=256, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      tie_word_embeddings=False)
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def make_tiny_corpus(folder: Path, docs_per_genre: int = 60, seed: int = 0) -> Path:
    """A folder corpus with one subfolder per genre (the genre becomes the token's `source`)."""
    rng = random.Random(seed)
    folder = Path(folder)
    for genre, texts in GENRES.items():
        (folder / genre).mkdir(parents=True, exist_ok=True)
        for i in range(docs_per_genre):
            sents = [rng.choice(texts) for _ in range(rng.randint(2, 6))]
            (folder / genre / f"{i:03d}.txt").write_text(" ".join(sents))
    return folder
