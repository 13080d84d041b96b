"""The shim's C ABI in Python terms: functions, status codes, flags and the struct layouts.

Mirrors shim/wasillama.h (tests/test_abi.py holds the two together, and against the exports of
wasm/llama.wasm). The structs hold only fixed-width little-endian scalars, so the same bytes are
valid in the wasm32 guest and in the native library; each begins with its own size (the header's
"Sized structs").
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from .. import errors
from ..options import ContextOptions, LoadOptions, Sampling

ABI_VERSION = 2  # the major version: must match
ABI_MINOR = 4    # additions: the module's minor version must be at least this


def split_version(raw: int) -> tuple[int, int]:
    """wl_abi_version()'s (major << 16) | minor."""
    return raw >> 16, raw & 0xFFFF


# Every function of the ABI: its parameters' kinds, in order. Each returns an int32 status.
# "ptr" is an address in the transport's memory (a guest offset in wasm, a host address natively).
FUNCTIONS: dict[str, tuple[str, ...]] = {
    "wl_abi_version": (),
    "wl_init": (),
    "wl_error_last": ("ptr", "i32"),
    "wl_system_info": ("ptr", "i32"),
    "wl_devices": ("ptr", "i32"),
    "wl_model_load_host": ("i32", "i64", "ptr", "ptr", "i32"),
    "wl_model_load_path": ("ptr", "ptr", "ptr", "i32"),
    "wl_model_free": ("i32",),
    "wl_lora_load_host": ("i32", "i32", "i64"),
    "wl_lora_free": ("i32",),
    "wl_context_set_loras": ("i32", "ptr", "ptr", "i32"),
    "wl_model_info_get": ("i32", "ptr"),
    "wl_model_meta": ("i32", "ptr", "ptr", "i32"),
    "wl_model_meta_count": ("i32",),
    "wl_model_meta_key": ("i32", "i32", "ptr", "i32"),
    "wl_model_meta_value": ("i32", "i32", "ptr", "i32"),
    "wl_model_desc": ("i32", "ptr", "i32"),
    "wl_model_chat_template": ("i32", "ptr", "ptr", "i32"),
    "wl_model_chat_apply": ("i32", "ptr", "ptr", "i32", "i32", "i32", "ptr", "i32"),
    "wl_json_schema_to_grammar": ("ptr", "i32", "ptr", "i32"),
    "wl_chat_apply": ("i32", "ptr", "i32", "ptr", "i32"),
    "wl_chat_parse": ("ptr", "i32", "ptr", "i32", "i32", "ptr", "i32"),
    "wl_vocab_tokenize": ("i32", "ptr", "i32", "i32", "ptr", "i32"),
    "wl_vocab_detokenize": ("i32", "ptr", "i32", "i32", "ptr", "i32"),
    "wl_vocab_piece": ("i32", "i32", "i32", "ptr", "i32"),
    "wl_vocab_is_eog": ("i32", "i32"),
    "wl_vocab_eog_tokens": ("i32", "ptr", "i32"),
    "wl_context_new": ("i32", "ptr"),
    "wl_context_free": ("i32",),
    "wl_context_info": ("i32", "ptr", "i32"),
    "wl_context_abort_flag": ("i32", "ptr"),
    "wl_context_decode": ("i32", "ptr", "i32", "ptr", "ptr", "ptr", "ptr"),
    "wl_context_logits": ("i32", "i32", "ptr", "i32"),
    "wl_context_embeddings_seq": ("i32", "i32", "ptr", "i32"),
    "wl_context_embeddings_token": ("i32", "i32", "ptr", "i32"),
    "wl_context_generate": ("i32", "i32", "ptr", "ptr", "ptr", "ptr", "i32", "ptr", "ptr", "ptr", "ptr", "i32",
                            "ptr", "ptr"),
    "wl_memory_clear": ("i32",),
    "wl_memory_seq_rm": ("i32", "i32", "i32", "i32"),
    "wl_memory_seq_cp": ("i32", "i32", "i32", "i32", "i32"),
    "wl_memory_seq_keep": ("i32", "i32"),
    "wl_memory_seq_add": ("i32", "i32", "i32", "i32", "i32"),
    "wl_memory_seq_pos_range": ("i32", "i32", "ptr"),
    "wl_state_seq_get": ("i32", "i32", "ptr", "i32"),
    "wl_state_seq_set": ("i32", "i32", "ptr", "i32"),
    "wl_sampler_chain_new": ("i32",),
    "wl_sampler_chain_add": ("i32", "i32", "ptr", "i32", "ptr", "i32", "ptr", "i32"),
    "wl_sampler_free": ("i32",),
    "wl_sampler_reset": ("i32",),
    "wl_sampler_accept": ("i32", "ptr", "i32"),
    "wl_sampler_sample": ("i32", "i32", "i32"),
    # native builds only (host services are imports of the wasm module; its CPU code is built in)
    "wl_set_host": ("ptr", "ptr"),
    "wl_backends_load": ("ptr", "ptr", "ptr", "i32"),
}
NATIVE_ONLY = frozenset({"wl_set_host", "wl_backends_load"})  # not exported by llama.wasm

E_HANDLE = -1
E_ARG = -2
E_LOAD = -3
E_NOMEM = -4
E_CTX_FULL = -5
E_DECODE = -6
E_ABORTED = -7
E_TEMPLATE = -8
E_INTERNAL = -9
E_UNSUPPORTED = -10

SAMPLER_GREEDY = 1
SAMPLER_DIST = 2
SAMPLER_TEMP = 3
SAMPLER_TEMP_EXT = 4
SAMPLER_TOP_K = 5
SAMPLER_TOP_P = 6
SAMPLER_MIN_P = 7
SAMPLER_TYPICAL = 8
SAMPLER_PENALTIES = 9
SAMPLER_DRY = 10
SAMPLER_XTC = 11
SAMPLER_MIROSTAT = 12
SAMPLER_MIROSTAT_V2 = 13
SAMPLER_LOGIT_BIAS = 14
SAMPLER_GRAMMAR = 15
SAMPLER_GRAMMAR_LAZY = 16

NUMERICS_FAST = 0  # the build's fastest kernels
NUMERICS_X86 = 1   # round as llama.cpp's x86 CPU builds

SPLIT_MODE_LAYER = 1  # llama_split_mode: whole layers per GPU

STOP_LENGTH = 0
STOP_EOG = 1
STOP_CTX_FULL = 2

TOP_LOGPROBS_MAX = 20
JSON_SCHEMA_MAX_DEPTH = 64
CHAT_TEMPLATE_MAX_DEPTH = 64  # deepest nesting of blocks, or of brackets in a tag, wl_chat_apply takes

TOK_ADD_SPECIAL = 1
TOK_PARSE_SPECIAL = 2

_ERRORS: dict[int, type[errors.WasillamaError]] = {
    E_HANDLE: errors.ClosedError,
    E_ARG: errors.InvalidArgumentError,
    E_LOAD: errors.ModelLoadError,
    E_NOMEM: errors.OutOfMemoryError,
    E_CTX_FULL: errors.ContextFullError,
    E_DECODE: errors.DecodeError,
    E_ABORTED: errors.AbortedError,
    E_TEMPLATE: errors.ChatTemplateError,
    E_INTERNAL: errors.BackendError,
    E_UNSUPPORTED: errors.UnsupportedOptionError,
}


def error_for(status: int, message: str) -> errors.WasillamaError:
    """The exception for a negative shim status and its last-error message."""
    cls = _ERRORS.get(status, errors.BackendError)
    return cls(message or f"shim call failed with status {status}")


def tok_flags(special: bool, parse: bool) -> int:
    """Tokenizer flags: add (tokenize) / keep (detokenize) BOS-EOS; parse / render control tokens."""
    return (TOK_ADD_SPECIAL if special else 0) | (TOK_PARSE_SPECIAL if parse else 0)


MODEL_PARAMS = struct.Struct("<8i")     # size, then 7 fields
CONTEXT_PARAMS = struct.Struct("<15i")  # size, then 14 fields
MODEL_INFO = struct.Struct("<19q")      # size, then 18 fields


@dataclass(frozen=True)
class ModelParams:
    """wl_model_params; made from the public LoadOptions (whose defaults are the only ones)."""

    n_gpu_layers: int
    main_gpu: int
    split_mode: int  # llama_split_mode
    use_mmap: bool
    use_mlock: bool
    vocab_only: bool
    check_tensors: bool

    @classmethod
    def of(cls, o: LoadOptions) -> ModelParams:
        return cls(o.gpu_layers, o.main_gpu, SPLIT_MODE_LAYER, o.mmap, o.mlock, o.vocab_only, o.check_tensors)

    def pack(self) -> bytes:
        return MODEL_PARAMS.pack(
            MODEL_PARAMS.size, self.n_gpu_layers, self.main_gpu, self.split_mode, int(self.use_mmap),
            int(self.use_mlock), int(self.vocab_only), int(self.check_tensors),
        )


@dataclass(frozen=True)
class ContextParams:
    """wl_context_params; made from the public ContextOptions (whose defaults are the only ones)."""

    n_ctx: int
    n_batch: int
    n_ubatch: int
    n_seq_max: int
    n_threads: int
    n_threads_batch: int
    embeddings: bool
    flash_attn: int  # -1 auto, 0 off, 1 on
    type_k: int
    type_v: int
    offload_kqv: bool
    pooling_type: int  # -1 = from the model
    kv_unified: bool
    numerics: int  # NUMERICS_FAST / NUMERICS_X86

    @classmethod
    def of(cls, o: ContextOptions) -> ContextParams:
        # embeddings: a non-causal model must see a whole sequence in one ubatch
        n_ubatch = o.n_batch if o.embeddings else min(o.n_ubatch, o.n_batch)
        return cls(o.n_ctx, o.n_batch, n_ubatch, o.n_seq_max, o.n_threads, o.n_threads_batch, o.embeddings,
                   -1 if o.flash_attn is None else int(o.flash_attn), o.type_k, o.type_v, o.offload_kqv,
                   -1 if o.pooling is None else POOLING[o.pooling], o.kv_unified,
                   NUMERICS[o.numerics])

    def pack(self) -> bytes:
        return CONTEXT_PARAMS.pack(
            CONTEXT_PARAMS.size, self.n_ctx, self.n_batch, self.n_ubatch, self.n_seq_max, self.n_threads,
            self.n_threads_batch, int(self.embeddings), self.flash_attn, self.type_k, self.type_v,
            int(self.offload_kqv), self.pooling_type, int(self.kv_unified), self.numerics,
        )


@dataclass(frozen=True)
class SamplerStep:
    """One sampler of a chain, as wl_sampler_chain_add takes it."""

    type: int
    floats: tuple[float, ...] = ()
    ints: tuple[int, ...] = ()
    text: bytes = b""


def _i32_seed(seed: int) -> int:
    seed &= 0xFFFFFFFF  # llama.cpp's seeds are uint32; the ABI passes int32
    return seed - 2**32 if seed >= 2**31 else seed


def grammar_step(grammar: str, *, prefill: Sequence[int] = (), lazy: bool = False,
                 trigger_patterns: Sequence[str] = (), trigger_tokens: Sequence[int] = ()) -> SamplerStep:
    """A GBNF grammar as a chain step: strict (after the `prefill` tokens), or lazy (free until
    a trigger token or a text matching a trigger pattern, a regular expression)."""
    if any("\0" in t for t in (grammar, *trigger_patterns)):
        raise errors.InvalidArgumentError("a grammar and its triggers must not contain NUL characters")
    text = grammar.encode() + b"\0root"
    if lazy:
        return SamplerStep(SAMPLER_GRAMMAR_LAZY, (), tuple(trigger_tokens),
                           b"".join([text, *(b"\0" + p.encode() for p in trigger_patterns)]))
    return SamplerStep(SAMPLER_GRAMMAR, (), tuple(prefill), text)


def sampler_chain(s: Sampling, seed: int, eog_tokens: Sequence[int] = (),
                  grammar: SamplerStep | None = None) -> list[SamplerStep]:
    """The chain llama.cpp's common sampler builds for these options (common/sampling.cpp),
    with a grammar first (it constrains every candidate) and greedy for temperature <= 0.
    `eog_tokens` get a bias of -inf when s.ignore_eos. `grammar` (a chat template's, from
    grammar_step) stands for s.grammar, which must then be None."""
    out = []
    if grammar is not None and s.grammar is not None:
        raise errors.UnsupportedOptionError("a grammar (or json_schema) does not combine with tools")
    if s.grammar is not None:
        grammar = grammar_step(s.grammar)
    if grammar is not None:
        out.append(grammar)
    bias = dict(s.logit_bias)
    if s.ignore_eos:
        bias.update({t: -math.inf for t in eog_tokens})
    if bias:
        out.append(SamplerStep(SAMPLER_LOGIT_BIAS, tuple(bias.values()), tuple(bias.keys())))
    if s.repeat_penalty != 1.0 or s.frequency_penalty != 0.0 or s.presence_penalty != 0.0:
        out.append(SamplerStep(SAMPLER_PENALTIES, (s.repeat_penalty, s.frequency_penalty, s.presence_penalty),
                               (s.repeat_last_n,)))
    if s.dry_multiplier > 0.0:
        breakers = [b for b in s.dry_sequence_breakers if b]
        if any("\0" in b for b in breakers):
            raise errors.InvalidArgumentError("DRY sequence breakers must not contain NUL characters")
        out.append(SamplerStep(SAMPLER_DRY, (s.dry_multiplier, s.dry_base), (s.dry_allowed_length, s.dry_last_n),
                               b"\0".join(b.encode() for b in breakers)))
    if s.mirostat == 1:
        return [*out, SamplerStep(SAMPLER_TEMP, (s.temperature,)),
                SamplerStep(SAMPLER_MIROSTAT, (s.mirostat_tau, s.mirostat_eta), (_i32_seed(seed), 100))]
    if s.mirostat == 2:
        return [*out, SamplerStep(SAMPLER_TEMP, (s.temperature,)),
                SamplerStep(SAMPLER_MIROSTAT_V2, (s.mirostat_tau, s.mirostat_eta), (_i32_seed(seed),))]
    if s.temperature <= 0:
        return [*out, SamplerStep(SAMPLER_GREEDY)]
    if s.top_k > 0:
        out.append(SamplerStep(SAMPLER_TOP_K, (), (s.top_k,)))
    if s.typical_p < 1.0:
        out.append(SamplerStep(SAMPLER_TYPICAL, (s.typical_p,), (1,)))
    if s.top_p < 1.0:
        out.append(SamplerStep(SAMPLER_TOP_P, (s.top_p,), (1,)))
    if s.min_p > 0.0:
        out.append(SamplerStep(SAMPLER_MIN_P, (s.min_p,), (1,)))
    if s.xtc_probability > 0.0:
        out.append(SamplerStep(SAMPLER_XTC, (s.xtc_probability, s.xtc_threshold), (1, _i32_seed(seed))))
    out.append(SamplerStep(SAMPLER_TEMP, (s.temperature,)))
    out.append(SamplerStep(SAMPLER_DIST, (), (_i32_seed(seed),)))
    return out


POOLING: dict[str, int] = {"none": 0, "mean": 1, "cls": 2, "last": 3, "rank": 4}  # llama_pooling_type
NUMERICS: dict[str, int] = {"fast": NUMERICS_FAST, "x86": NUMERICS_X86}  # wl_context_params.numerics


@dataclass(frozen=True)
class ContextInfo:
    """What wl_context_info reports, in its order."""

    n_ctx: int
    n_batch: int
    n_ubatch: int
    n_seq_max: int
    n_ctx_seq: int  # the cells one sequence may use
    embeddings: int  # 0/1
    pooling_type: int  # llama_pooling_type in effect

    COUNT: ClassVar[int] = 7

    @property
    def pooling(self) -> str:
        return {v: k for k, v in POOLING.items()}.get(self.pooling_type, str(self.pooling_type))


@dataclass(frozen=True)
class ModelInfo:
    """Numbers llama.cpp reports about a loaded model (see wl_model_info)."""

    n_params: int
    size_bytes: int
    n_ctx_train: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_vocab: int
    vocab_type: int
    token_bos: int
    token_eos: int
    token_eot: int
    token_nl: int
    add_bos: bool
    add_eos: bool
    has_encoder: bool
    has_decoder: bool
    n_swa: int

    @staticmethod
    def room() -> bytes:
        """An empty wl_model_info with its size set, for the module to fill."""
        return MODEL_INFO.pack(MODEL_INFO.size, *([0] * (MODEL_INFO.size // 8 - 1)))

    @classmethod
    def unpack(cls, raw: bytes) -> ModelInfo:
        _, *v = MODEL_INFO.unpack(raw)
        return cls(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11], v[12],
                   bool(v[13]), bool(v[14]), bool(v[15]), bool(v[16]), v[17])
