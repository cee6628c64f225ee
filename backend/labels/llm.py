"""Chat back-ends for the explainer and the LLM scorer: a local Hugging Face instruct model or an
OpenAI-compatible HTTP endpoint, behind one small interface, with an on-disk response cache.

    chat = make_chat("local-llm", model="smollm2-135m")   # or make_chat("openai", model=..., base_url=...)
    texts = chat.complete([messages, ...], max_tokens=48)  # one reply per conversation
    yes = chat.yes_no([messages, ...])                     # True/False per conversation

The cache (`ResponseCache`) keys each reply by a SHA-256 of (back-end, model, request, parameters) and
writes one small JSON file per reply, atomically, so an interrupted run resumes where it stopped and a
rerun costs nothing. Decoding is greedy (temperature 0) so a cached reply is the reply.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from backend.common.atomic import write_json
from backend.common.errors import UserError

BACKENDS = ("local-llm", "openai")
DEFAULT_LOCAL_MODEL = "smollm2-135m"
DEFAULT_OPENAI_MODEL = "gpt-4o-mini"
DEFAULT_KEY_ENV = "OPENAI_API_KEY"


@dataclass
class LLMConfig:
    """Which LLM an explainer or a scorer asks, when it is `local-llm` or `openai` (ignored otherwise)."""

    llm_model: str | None = None
    """local-llm: model name or folder; openai: model id. None = DEFAULT_LOCAL_MODEL (the embedded
    SmolLM2-135M-Instruct, offline) or DEFAULT_OPENAI_MODEL."""
    llm_base_url: str | None = None
    """openai: endpoint base URL, e.g. http://127.0.0.1:8000/v1 (any OpenAI-compatible server)."""
    llm_api_key_env: str = DEFAULT_KEY_ENV
    """Environment variable holding the API key (the key itself stays off the command line)."""


class ResponseCache:
    """One JSON file per reply under `folder`, named by the request's hash (None folder: no cache)."""

    def __init__(self, folder: str | Path | None):
        self.folder = Path(folder) if folder else None
        self.hits = 0

    @staticmethod
    def key(*parts) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()

    def get(self, key: str):
        if self.folder is None:
            return None
        p = self.folder / key[:2] / f"{key}.json"
        try:
            value = json.loads(p.read_text())["reply"]
        except (OSError, ValueError, KeyError):
            return None
        self.hits += 1
        return value

    def put(self, key: str, reply) -> None:
        if self.folder is not None:
            write_json(self.folder / key[:2] / f"{key}.json", {"reply": reply})


@contextlib.contextmanager
def cpu_threads(device):
    """Half the cores (at least 1, at most 8) for a CPU forward pass, restored after: on a busy 2-core
    machine torch's two intra-op threads spin against the other processes, and a 400-token prompt of
    SmolLM2-135M took 13-23 s with 2 threads against 4 s with 1 (measured under load 7); 1000 MiniLM
    embeddings 16 s against 5-7 s."""
    import torch

    if getattr(device, "type", str(device)) != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(8, (os.cpu_count() or 2) // 2)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _plain_prompt(messages: list[dict]) -> str:
    """A prompt for a tokenizer without a chat template (the tiny test model)."""
    parts = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join(parts) + "\n\nAssistant:"


class LocalChat:
    """A local causal LM (`backend.model.loading.load_model`) with its chat template; greedy, batched with left padding."""

    kind = "local-llm"

    def __init__(self, model: str = DEFAULT_LOCAL_MODEL, device: str = "auto", cache: ResponseCache | None = None,
                 batch_size: int = 8, lm=None):
        from backend.model.loading import load_model

        self.model_name = model
        self.lm = lm or load_model(model, device=device)
        self.cache = cache or ResponseCache(None)
        self.batch_size = batch_size
        tok = self.lm.tokenizer
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token or tok.unk_token

    def _prompt(self, messages: list[dict]) -> str:
        tok = self.lm.tokenizer
        if getattr(tok, "chat_template", None):
            return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return _plain_prompt(messages)

    def _encode(self, prompts: list[str]):
        tok = self.lm.tokenizer
        tok.padding_side = "left"  # generation continues from the last position of every row
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=not getattr(tok, "chat_template", None))
        return {k: v.to(self.lm.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}

    def _cached(self, convs: list[list[dict]], params: dict, run_batch) -> list:
        keys = [ResponseCache.key(self.kind, self.model_name, c, params) for c in convs]
        out = [self.cache.get(k) for k in keys]
        todo = [i for i, v in enumerate(out) if v is None]
        for a in range(0, len(todo), self.batch_size):
            idx = todo[a:a + self.batch_size]
            for i, reply in zip(idx, run_batch([convs[i] for i in idx])):
                out[i] = reply
                self.cache.put(keys[i], reply)
        return out

    def complete(self, convs: list[list[dict]], max_tokens: int = 48, prefill: str = "") -> list[str]:
        """Greedy replies; `prefill` starts the assistant's answer (a small model then completes the sentence
        instead of echoing the instructions) and is part of the returned text."""
        import torch

        def run(batch):
            enc = self._encode([self._prompt(c) + prefill for c in batch])
            tok = self.lm.tokenizer
            with torch.inference_mode(), cpu_threads(self.lm.device):
                gen = self.lm.model.generate(**enc, max_new_tokens=max_tokens, do_sample=False,
                                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            new = gen[:, enc["input_ids"].shape[1]:]  # [B, <=max_tokens] the generated part only
            return [prefill + t for t in tok.batch_decode(new, skip_special_tokens=True)]

        return self._cached(convs, {"max_tokens": max_tokens, "op": "complete", "prefill": prefill}, run)

    def yes_no(self, convs: list[list[dict]]) -> list[bool]:
        """Yes when the next-token logit of "Yes" beats that of "No" (no sampling, no parsing)."""
        import torch

        tok = self.lm.tokenizer
        yes_id = tok.encode("Yes", add_special_tokens=False)[0]
        no_id = tok.encode("No", add_special_tokens=False)[0]

        def run(batch):
            enc = self._encode([self._prompt(c) for c in batch])
            with torch.inference_mode(), cpu_threads(self.lm.device):
                logits = self.lm.model(**enc).logits[:, -1, :]  # [B, vocab] at the last (left-padded) position
            return [bool(v) for v in (logits[:, yes_id] > logits[:, no_id]).tolist()]

        return [bool(v) for v in self._cached(convs, {"op": "yes_no"}, run)]


class OpenAIChat:
    """Any OpenAI-compatible `/chat/completions` endpoint (OpenAI, vLLM, llama.cpp server, Ollama ...)."""

    kind = "openai"

    def __init__(self, model: str = DEFAULT_OPENAI_MODEL, base_url: str | None = None, key_env: str = DEFAULT_KEY_ENV,
                 cache: ResponseCache | None = None, timeout: float = 60.0, retries: int = 3):
        if not base_url:
            raise UserError("the openai back-end needs --llm-base-url (e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1)")
        if not str(base_url).startswith(("http://", "https://")):
            raise UserError(f"--llm-base-url must start with http:// or https://, not {base_url!r}")
        self.base_url = str(base_url).rstrip("/")
        self.model_name = model or DEFAULT_OPENAI_MODEL
        self.key = os.environ.get(key_env or DEFAULT_KEY_ENV, "")  # local servers often need none
        self.cache = cache or ResponseCache(None)
        self.timeout, self.retries = timeout, retries

    def _post(self, messages: list[dict], max_tokens: int) -> str:
        body = json.dumps({"model": self.model_name, "messages": messages, "temperature": 0,
                           "max_tokens": max_tokens}).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        url = f"{self.base_url}/chat/completions"
        for attempt in range(self.retries + 1):
            req = urllib.request.Request(url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as r:
                    data = json.loads(r.read().decode("utf-8"))
                return str(data["choices"][0]["message"]["content"] or "")
            except urllib.error.HTTPError as e:
                if e.code in (429, 500, 502, 503, 504) and attempt < self.retries:
                    time.sleep(min(8.0, 0.5 * 2 ** attempt))
                    continue
                raise UserError(f"{url} answered HTTP {e.code}: {e.reason}") from None
            except urllib.error.URLError as e:
                raise UserError(f"cannot reach {url}: {e.reason}") from None
            except (ValueError, KeyError, IndexError, TypeError):
                raise UserError(f"{url} did not answer with an OpenAI chat completion") from None
        raise UserError(f"{url} kept failing")  # pragma: no cover

    def _cached(self, convs, params: dict, one) -> list:
        out = []
        for c in convs:
            k = ResponseCache.key(self.kind, self.base_url, self.model_name, c, params)
            v = self.cache.get(k)
            if v is None:
                v = one(c)
                self.cache.put(k, v)
            out.append(v)
        return out

    def complete(self, convs: list[list[dict]], max_tokens: int = 48, prefill: str = "") -> list[str]:
        """Replies; `prefill` is ignored (chat endpoints do not continue an assistant turn) but the
        instructions ask for the same one sentence."""
        return self._cached(convs, {"max_tokens": max_tokens, "op": "complete"}, lambda c: self._post(c, max_tokens))

    def yes_no(self, convs: list[list[dict]]) -> list[bool]:
        replies = self._cached(convs, {"op": "yes_no"}, lambda c: self._post(c, 3))
        return [str(r).strip().lower().startswith("yes") for r in replies]


def make_chat(kind: str, model: str | None = None, base_url: str | None = None, key_env: str | None = None,
              cache_dir: str | Path | None = None, device: str = "auto", batch_size: int = 8, lm=None):
    """A chat back-end by name: `local-llm` or `openai`."""
    cache = ResponseCache(cache_dir)
    if kind == "local-llm":
        return LocalChat(model or DEFAULT_LOCAL_MODEL, device=device, cache=cache, batch_size=batch_size, lm=lm)
    if kind == "openai":
        return OpenAIChat(model or DEFAULT_OPENAI_MODEL, base_url=base_url, key_env=key_env or DEFAULT_KEY_ENV, cache=cache)
    raise UserError(f"unknown LLM back-end {kind!r}; choose one of {', '.join(BACKENDS)}")
