"""`wasillama.embed(texts)`: sentence embeddings right after install, offline.

The model (all-MiniLM-L6-v2, q8_0, 25 MB, Apache-2.0; see wasillama/models/NOTICE.md) ships in
this package and is loaded from the package's bytes into the wasm sandbox, sha256-checked, on
first use; one Model and Context then serve every call (calls from several threads take turns).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from importlib import resources
from typing import Any

import numpy as np

from .context import Context
from .errors import ModelLoadError
from .model import Model

MODEL_FILE = "all-MiniLM-L6-v2-q8_0.gguf"
MODEL_SHA256 = "bf1d74689ea4b1d2db7bc1ee52ed8f4618984437d05ba47d7513d24a8c5f18ed"
N_EMBD = 384
# Texts per llama_decode, and the tokens they may take together. A BERT sees each text whole in
# one ubatch (its attention is not causal), whose score matrix grows with n_batch squared.
N_SEQ = 8
N_BATCH = 1024
MAX_TEXT_TOKENS = 512  # the model's training context

_lock = threading.Lock()
_runtime: tuple[Model, Context] | None = None


def model_bytes() -> bytes:
    """The shipped GGUF, checked against its pinned sha256."""
    data = resources.files("wasillama.models").joinpath(MODEL_FILE).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != MODEL_SHA256:
        raise ModelLoadError(f"the packaged {MODEL_FILE} has sha256 {digest}, expected {MODEL_SHA256}: "
                             "reinstall wasillama")
    return data


def _context() -> Context:
    global _runtime
    if _runtime is None or _runtime[1].closed:
        model = Model.load(model_bytes())
        try:
            ctx = model.new_context(n_ctx=N_SEQ * MAX_TEXT_TOKENS, n_batch=N_BATCH, n_seq_max=N_SEQ, embeddings=True)
        except BaseException:
            model.close()
            raise
        _runtime = (model, ctx)
    return _runtime[1]


def embed(texts: str | Sequence[str], *, normalize: bool = True, truncate: bool = False) -> np.ndarray[Any, Any]:
    """Sentence embeddings with all-MiniLM-L6-v2: a (len(texts), 384) float32 array, or one
    384-vector for a single string; L2-normalised (cosine similarity is then a dot product)
    unless normalize=False. A text over 512 tokens raises ContextFullError, or is cut to its
    first 512 with truncate=True."""
    with _lock:
        ctx = _context()
        if isinstance(texts, str):
            return ctx.embed(texts, normalize=normalize, truncate=truncate)
        return ctx.embed_batch(list(texts), normalize=normalize, truncate=truncate)


def close() -> None:
    """Free the embedding model (the next embed() loads it again)."""
    global _runtime
    with _lock:
        if _runtime is not None:
            _runtime[1].close()
            _runtime[0].close()
            _runtime = None
