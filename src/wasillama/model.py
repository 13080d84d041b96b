"""Model: weights, vocabulary and chat template, loaded into a backend.

Thread contract: a Model may be shared by many threads (tokenize, detokenize, metadata and
new_context are safe concurrently); each Context is one-thread-at-a-time. On the wasm backend
calls into one model's sandbox are serialised; on the native backend they run in parallel.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import Any, Literal

from . import chat, deadline
from .backend import Backend, Buffer, ModelSource, installed_plugins, load_plugin
from .chat import ChatMessage, ChatPrompt, Message
from .context import Context
from .errors import (
    ClosedError,
    DeadlineExceededError,
    ModelLoadError,
    OutOfMemoryError,
    UnsupportedOptionError,
    WasillamaError,
)
from .lora import Lora
from .options import ChatOptions, ContextOptions, LoadOptions, Sampling, SandboxOptions, names, resolve
from .progress import compile_wasm_module, load_bar
from .progress import wanted as show_progress
from .sandbox import Sandbox
from .shim import abi
from .shim.abi import ContextParams, ModelInfo, ModelParams

log = logging.getLogger("wasillama")

BackendName = Literal["wasm", "native", "auto"]


def kv_cache_bytes(info: ModelInfo, n_ctx: int) -> int:
    """An f16 K and V cache of n_ctx tokens with full attention in every layer."""
    return n_ctx * info.n_layer * info.n_head_kv * (info.n_embd // info.n_head) * 2 * 2


def _choose_backend(requested: BackendName, source: ModelSource, gpu_layers: int) -> str:
    if requested in ("wasm", "native"):
        return requested
    if requested != "auto":
        raise UnsupportedOptionError(f"unknown backend {requested!r}: use 'wasm', 'native' or 'auto'")
    limit = load_plugin("wasm").capabilities.max_model_bytes
    too_big = limit is not None and source.size > limit
    if "native" in installed_plugins() and (gpu_layers != 0 or too_big):
        return "native"
    return "wasm"


class Model:
    """A loaded GGUF model. Use ``Model.load(...)``; close it (or use ``with``) when done."""

    def __init__(self, sandbox: Sandbox, handle: int, source: ModelSource, params: ModelParams,
                 tensor_split: Sequence[float] = ()) -> None:
        self._sandbox = sandbox
        self._handle = handle
        self._source = source
        self._params = params
        self._tensor_split = tuple(tensor_split)
        self._closed = False
        self._lock = threading.Lock()
        self._contexts: weakref.WeakSet[Context] = weakref.WeakSet()
        self._loras: weakref.WeakSet[Lora] = weakref.WeakSet()
        self._pieces: dict[tuple[int, bool], bytes] = {}
        self._grammars: dict[str, str] = {}
        self.info: ModelInfo = sandbox.backend.model_info(handle)

    @property
    def _backend(self) -> Backend:
        """The live backend (rebuilt first after a trap when on_trap="rebuild"; so are the handles
        read after it)."""
        self._revive()
        return self._sandbox.backend

    @classmethod
    def load(cls, source: str | os.PathLike[str] | Buffer, *, backend: BackendName = "wasm",
             trust_model: bool = False, options: LoadOptions | None = None,
             sandbox: SandboxOptions | None = None,
             progress: Callable[[float], bool | None] | bool | None = None,
             timeout: float | None = None, **load_options: Any) -> Model:
        """Load a GGUF model from a path, from bytes, or from the Hugging Face hub.

        source: a path, bytes, or "hf://owner/repo[:QUANT]" / "hf://owner/repo/file.gguf"
        (fetched into the hub's cache unless it is there: wasillama.hub). A split GGUF is named
        by its first part (…-00001-of-0000N.gguf); the others are found beside it.

        options: a LoadOptions (its defaults when omitted); keyword arguments named like its
        fields (gpu_layers, main_gpu, tensor_split, mmap, mlock, vocab_only, check_tensors)
        override it.
        sandbox: a SandboxOptions (max_memory, default_timeout, on_trap="rebuild"); keyword
        arguments named like its fields override it too.
        progress: called with the fraction of the file read so far (0.0 ... 1.0, every 1% at
        most; a file the native backend maps reports 0.0 and 1.0 only); returning False stops
        the load with ModelLoadError. True draws progress bars on stderr instead (download,
        first compile of the wasm module, load) when it is a terminal.
        timeout: seconds, then DeadlineExceededError (a load the host serves stops at its next
        read; the wasm sandbox stops the guest by force soon after).

        backend: "wasm" (default) runs llama.cpp inside a wasmtime sandbox: the model file can
        be hostile and the process survives. "native" uses the wasillama-native plugin (GPU,
        threads, no 4 GiB limit) and is not a sandbox, so it needs ``trust_model=True``.
        "auto" picks native only when the plugin is installed and the model is too big for
        wasm32 or GPU layers were asked for (still subject to trust_model).
        """
        sandbox_fields = names(SandboxOptions)
        box = resolve(SandboxOptions, sandbox, {k: v for k, v in load_options.items() if k in sandbox_fields},
                      "Model.load")
        opts = resolve(LoadOptions, options, {k: v for k, v in load_options.items() if k not in sandbox_fields},
                       "Model.load")
        bars = progress is True and show_progress()
        src = ModelSource.of(source, quiet=not bars)
        if src.size == 0:
            raise ModelLoadError(f"{src.describe()} is empty (0 bytes): not a GGUF model file")
        name = _choose_backend(backend, src, opts.gpu_layers)
        log.info("loading %s with the %s backend", src.describe(), name)
        with contextlib.ExitStack() as bar:
            if isinstance(progress, bool):
                progress = None
                if bars:
                    if name == "wasm":
                        compile_wasm_module()
                    progress = bar.enter_context(load_bar(f"loading {src.name}", src.size))
            return cls._load(src, name, opts, box, trust_model, progress, timeout)

    @classmethod
    def _load(cls, src: ModelSource, name: str, opts: LoadOptions, box: SandboxOptions, trust_model: bool,
              progress: Callable[[float], bool | None] | None, timeout: float | None) -> Model:
        params = ModelParams.of(opts)
        plugin = load_plugin(name)
        if not plugin.capabilities.sandboxed and not trust_model:
            raise UnsupportedOptionError(
                f"the {name} backend runs llama.cpp without a sandbox: a malicious model file can "
                "compromise this process. Pass trust_model=True if you trust the file.")
        end = deadline.end_of(box.default_timeout if timeout is None else timeout)
        box_ = Sandbox(plugin, box)  # refuses options the backend cannot honour
        try:
            cap = box.memory_cap
            if cap is not None and src.size > cap:
                raise OutOfMemoryError(f"{src.describe()} holds {src.size / 2**20:.1f} MiB of weights, more than "
                                       f"the sandbox's memory cap of {cap / 2**20:.1f} MiB (max_memory)")
            with deadline.until(end):
                try:
                    handle = box_.backend.load_model(src, params, opts.tensor_split, progress)
                except ModelLoadError as e:  # a read refused at the deadline looks like a short file
                    if end is not None and time.monotonic() >= end:
                        raise DeadlineExceededError(f"the deadline passed while loading {src.describe()}") from e
                    raise
        except BaseException:
            box_.close()  # the whole sandbox goes, and with it every handle in it
            raise
        try:
            return cls(box_, handle, src, params, opts.tensor_split)
        except BaseException:
            if box_.owns_backend:
                box_.close()
            else:
                box_.backend.free_model(handle)
            raise

    # ---- lifecycle ---------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def _require_handle(self) -> int:
        """The model's handle in a live sandbox: after a trap, rebuilt first when on_trap="rebuild"."""
        if self._closed:
            raise ClosedError("the model is closed")
        self._revive()
        return self._handle

    def _revive(self) -> None:
        if self._sandbox.rebuilds_on_trap and self._sandbox.poisoned is not None and not self._closed:
            self._sandbox.rebuild(self._restore)

    def _restore(self, backend: Backend) -> None:
        """Load this model (and its LoRA adapters) into a fresh sandbox: Sandbox.rebuild's step."""
        handle = backend.load_model(self._source, self._params, self._tensor_split)
        info = backend.model_info(handle)
        if info != self.info:
            raise ModelLoadError(f"{self._source.describe()} is not the model it was when loaded (it changed on "
                                 "disk): the sandbox cannot be rebuilt")
        used = {lora for ctx in list(self._contexts) for lora in ctx._loras}  # a closed one too, while used
        loras = [(lora, backend.load_lora(handle, lora._source)) for lora in list(self._loras)
                 if not lora._closed or lora in used]
        self._handle = handle
        for lora, lora_handle in loras:
            lora._handle = lora_handle

    @property
    def poisoned(self) -> str | None:
        """Why the model's sandbox is unusable (the guest trapped), or None. With
        on_trap="rebuild" the next call rebuilds it."""
        return None if self._closed else self._sandbox.poisoned

    @property
    def sandbox_options(self) -> SandboxOptions:
        return self._sandbox.options

    def _timeout(self, timeout: float | None) -> float | None:
        """A call's timeout, or the sandbox's default."""
        return self._sandbox.timeout(timeout)

    def close(self) -> None:
        """Close every context of this model, then free the weights. Idempotent."""
        with self._lock:
            if self._closed:
                return
            contexts = list(self._contexts)
        for ctx in contexts:
            ctx.close()
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._sandbox.backend.free_model(self._handle)
        except WasillamaError as e:  # a poisoned sandbox cannot free; it is dropped whole below
            log.debug("freeing the model failed: %s", e)
        self._sandbox.close()

    def _check_cache_fits(self, params: ContextParams) -> None:
        """OutOfMemoryError before the allocation when the KV cache alone (f16, full attention:
        what can be known up front) and the weights exceed the sandbox's memory cap, or what the
        wasm32 guest can address at all (llama.cpp would trap on a buffer past 4 GiB, not fail)."""
        cap = self._sandbox.options.memory_cap
        space = self._sandbox.plugin.capabilities.address_space
        limit = min((x for x in (cap, space) if x is not None), default=None)
        i = self.info
        if limit is None or i.n_swa or params.type_k not in (-1, 1) or params.type_v not in (-1, 1) or not i.n_head:
            return
        n_ctx = params.n_ctx or i.n_ctx_train
        kv = kv_cache_bytes(i, n_ctx)
        if kv + i.size_bytes > limit:
            what = (f"the sandbox's memory cap of {limit / 2**20:.1f} MiB (max_memory)" if limit == cap else
                    f"the {limit / 2**30:.0f} GiB the wasm32 sandbox can address (the native backend has no such "
                    "limit)")
            raise OutOfMemoryError(
                f"a {n_ctx}-token cache needs {kv / 2**20:.1f} MiB beside {i.size_bytes / 2**20:.1f} MiB of weights, "
                f"more than {what}: ask for a smaller n_ctx")

    def _forget(self, ctx: Context) -> None:
        self._contexts.discard(ctx)

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # a safety net only
        with contextlib.suppress(Exception):
            self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.architecture}, {self.n_params / 1e6:.0f}M params"
        return f"<Model {self._source.describe()} ({state}) on {self.backend_name}>"

    # ---- facts -------------------------------------------------------------------------------

    @property
    def backend_name(self) -> str:
        return self._sandbox.backend.name

    @property
    def sandboxed(self) -> bool:
        return self._sandbox.backend.sandboxed

    @cached_property
    def metadata(self) -> dict[str, str]:
        """Every GGUF metadata key/value, as strings."""
        return self._backend.model_metadata(self._require_handle())

    @property
    def architecture(self) -> str:
        return self.metadata.get("general.architecture", "")

    @property
    def name(self) -> str:
        return self.metadata.get("general.name", "")

    @cached_property
    def description(self) -> str:
        return self._backend.model_desc(self._require_handle())

    @property
    def n_params(self) -> int:
        return self.info.n_params

    @property
    def size_bytes(self) -> int:
        return self.info.size_bytes

    @property
    def n_ctx_train(self) -> int:
        return self.info.n_ctx_train

    @property
    def n_embd(self) -> int:
        return self.info.n_embd

    @property
    def n_layer(self) -> int:
        return self.info.n_layer

    @property
    def n_vocab(self) -> int:
        return self.info.n_vocab

    @cached_property
    def chat_template(self) -> str | None:
        """The model's own chat template (Jinja source from the GGUF), or None."""
        return self._backend.chat_template(self._require_handle())

    # ---- vocabulary --------------------------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids for `text`. add_special adds BOS/EOS as the model asks; parse_special
        turns control-token text (e.g. "<|im_start|>") into control tokens."""
        arr = self._backend.tokenize(self._require_handle(), text.encode("utf-8", "surrogatepass"),
                                     add_special, parse_special)
        return [int(t) for t in arr]

    def detokenize(self, tokens: Sequence[int], *, keep_special: bool = False, render_special: bool = False) -> str:
        """Text for token ids. Invalid UTF-8 (a cut multi-byte character) becomes U+FFFD."""
        raw = self._backend.detokenize(self._require_handle(), list(tokens), keep_special, render_special)
        return raw.decode("utf-8", "replace")

    @cached_property
    def fingerprint(self) -> dict[str, Any]:
        """What identifies these weights for saved context states."""
        i = self.info
        return {"desc": self.description, "n_params": i.n_params, "size": i.size_bytes, "n_vocab": i.n_vocab,
                "n_embd": i.n_embd, "n_layer": i.n_layer}

    def load_lora(self, source: str | os.PathLike[str] | Buffer, *, timeout: float | None = None) -> Lora:
        """A LoRA adapter GGUF for this model, from a path or bytes (read by the host, like the
        model). Apply it with ``ctx.set_loras({lora: scale})``. A file for another model (other
        architecture or shapes) raises ModelLoadError. timeout: seconds, then
        DeadlineExceededError (an adapter file is as untrusted as a model file)."""
        src = ModelSource.of(source)
        with deadline.after(self._timeout(timeout)):
            lora = Lora(self, self._backend.load_lora(self._require_handle(), src), src)
        self._loras.add(lora)
        return lora

    def schema_grammar(self, schema: str) -> str:
        """The GBNF grammar of a JSON schema (llama.cpp's converter, run by the backend: inside
        the sandbox on wasm). Cached per schema text."""
        grammar = self._grammars.get(schema)
        if grammar is None:
            grammar = self._backend.json_schema_to_grammar(schema)
            with self._lock:
                self._grammars[schema] = grammar
        return grammar

    def prepare_sampling(self, sampling: Sampling, *, chat: ChatPrompt | None = None) -> Sampling:
        """`sampling` made ready to run: its json_schema converted to a grammar, and its whole
        sampler chain (with the grammar of `chat`, a rendered conversation) built once in this
        model's backend and freed. A grammar or schema that does not parse raises
        InvalidArgumentError here; one that crashes llama.cpp's parser traps this model's
        sandbox, not the one the returned Sampling is later used in. A server screens requests
        in a vocabulary-only Model this way (LoadOptions.vocab_only) before they join a batch."""
        chosen, steps = self._sampler_chain(sampling, 0 if sampling.seed is None else sampling.seed, chat)
        backend = self._backend
        backend.free_sampler(backend.new_sampler(self._require_handle(), steps))
        return chosen

    def _sampler_chain(self, sampling: Sampling, seed: int,
                       chat: ChatPrompt | None) -> tuple[Sampling, list[abi.SamplerStep]]:
        """`sampling` with its json_schema converted to a grammar (inside the backend: the
        sandbox, on wasm), and the sampler steps it makes with `seed` and `chat`'s grammar."""
        if isinstance(sampling.json_schema, str):
            sampling = dataclasses.replace(sampling, grammar=self.schema_grammar(sampling.json_schema),
                                           json_schema=None)
        return sampling, abi.sampler_chain(sampling, seed, self.eog_tokens if sampling.ignore_eos else (),
                                           chat.grammar if chat else None)

    @cached_property
    def eog_tokens(self) -> tuple[int, ...]:
        """The tokens that end generation (EOS, EOT, ... as the vocabulary marks them)."""
        return tuple(int(t) for t in self._backend.eog_tokens(self._require_handle()))

    def token_piece(self, token: int, *, render_special: bool = False) -> bytes:
        """The bytes a token stands for (may be part of a UTF-8 character); a control token's
        text only with render_special. Cached per token."""
        piece = self._pieces.get((token, render_special))
        if piece is None:
            piece = self._backend.token_piece(self._require_handle(), token, render_special)
            self._pieces[(token, render_special)] = piece
        return piece

    # ---- chat --------------------------------------------------------------------------------

    def apply_chat_template(self, messages: Sequence[Message], *, add_generation_prompt: bool = True,
                            options: ChatOptions | None = None, timeout: float | None = None,
                            **chat_options: Any) -> str:
        """Render messages ({"role", "content"} and, for tools, OpenAI's "tool_calls",
        "tool_call_id" ...) with the model's chat template, or ChatOptions' template and tools
        (keyword arguments named like its fields override `options`). Rendering runs inside the
        backend with llama.cpp's chat code and Jinja engine, never with host Jinja. timeout:
        seconds, then DeadlineExceededError (the template comes with the model file: in the wasm
        sandbox a template still running then is stopped by force, and that sandbox is unusable;
        the native backend cannot stop one)."""
        return self.render_chat(messages, options, add_generation_prompt, timeout=timeout, **chat_options).prompt

    def render_chat(self, messages: Sequence[Message], options: ChatOptions | None = None,
                    add_generation_prompt: bool = True, *, timeout: float | None = None,
                    **chat_options: Any) -> ChatPrompt:
        """apply_chat_template() with what generating and parsing the reply need (Context.chat
        uses it): stop strings, the tool-call grammar, the tool-call format."""
        chosen = resolve(ChatOptions, options, chat_options, "chat")
        with deadline.after(self._timeout(timeout)):
            return chat.render(self._backend, self._require_handle(), messages, chosen, add_generation_prompt)

    def parse_reply(self, prompt: ChatPrompt, text: str) -> ChatMessage:
        """A generated reply to `prompt` as a message, tool calls parsed (in the backend)."""
        self._require_handle()
        return chat.parse(self._backend, prompt, text)

    # ---- contexts ----------------------------------------------------------------------------

    def new_context(self, options: ContextOptions | None = None, **context_options: Any) -> Context:
        """A new KV cache (ContextOptions: n_ctx tokens, 0 = the model's training length, shared by
        n_seq_max sequences that each hold n_ctx / n_seq_max; `Context.generate_batch` uses
        them). Keyword arguments named like ContextOptions' fields override `options`."""
        params = ContextParams.of(resolve(ContextOptions, options, context_options, "new_context"))
        self._require_handle()
        self._check_cache_fits(params)
        ctx = Context(self, params)
        with self._lock:
            closing = self._closed
            if not closing:
                self._contexts.add(ctx)
        if closing:  # close() ran meanwhile and could not see this context
            ctx.close()
            raise ClosedError("the model is closed")
        return ctx
