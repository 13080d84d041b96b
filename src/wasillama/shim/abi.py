"""The shim's C ABI in Python terms: functions, status codes, flags and the struct layouts.

Mirrors shim/wasillama.h (tests/test_abi.py holds the two together, and against the exports of
wasm/llama.wasm). The structs hold only fixed-width little-endian scalars, so the same bytes are
valid in the wasm32 guest and in the native library.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from .. import errors

ABI_VERSION = 2  # the major version: must match
ABI_MINOR = 0    # additions: the module's minor version must be at least this


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
    "wl_model_info_get": ("i32", "ptr"),
    "wl_model_meta": ("i32", "ptr", "ptr", "i32"),
    "wl_model_meta_count": ("i32",),
    "wl_model_meta_key": ("i32", "i32", "ptr", "i32"),
    "wl_model_meta_value": ("i32", "i32", "ptr", "i32"),
    "wl_model_desc": ("i32", "ptr", "i32"),
    "wl_model_chat_template": ("i32", "ptr", "ptr", "i32"),
    "wl_model_chat_apply": ("i32", "ptr", "ptr", "i32", "i32", "i32", "ptr", "i32"),
    "wl_vocab_tokenize": ("i32", "ptr", "i32", "i32", "ptr", "i32"),
    "wl_vocab_detokenize": ("i32", "ptr", "i32", "i32", "ptr", "i32"),
    "wl_vocab_piece": ("i32", "i32", "i32", "ptr", "i32"),
    "wl_vocab_is_eog": ("i32", "i32"),
    "wl_context_new": ("i32", "ptr"),
    "wl_context_free": ("i32",),
    "wl_context_info": ("i32", "ptr", "i32"),
    "wl_context_abort_flag": ("i32", "ptr"),
    "wl_context_decode": ("i32", "ptr", "i32", "ptr", "ptr", "ptr", "ptr"),
    "wl_context_logits": ("i32", "i32", "ptr", "i32"),
    "wl_context_generate": ("i32", "i32", "ptr", "ptr", "ptr", "ptr", "i32", "ptr", "ptr", "ptr"),
    "wl_memory_clear": ("i32",),
    "wl_memory_seq_rm": ("i32", "i32", "i32", "i32"),
    "wl_memory_seq_cp": ("i32", "i32", "i32", "i32", "i32"),
    "wl_memory_seq_keep": ("i32", "i32"),
    "wl_memory_seq_add": ("i32", "i32", "i32", "i32", "i32"),
    "wl_memory_seq_pos_range": ("i32", "i32", "ptr"),
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

STOP_LENGTH = 0
STOP_EOG = 1
STOP_CTX_FULL = 2

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


def pack_messages(messages: Sequence[tuple[str, str]]) -> bytes:
    """(role, content) pairs as the ABI's consecutive NUL-terminated strings."""
    parts = []
    for role, content in messages:
        if "\0" in role or "\0" in content:  # would shift every later string
            raise errors.InvalidArgumentError("chat messages must not contain NUL characters")
        parts.append(role.encode() + b"\0" + content.encode() + b"\0")
    return b"".join(parts)


MODEL_PARAMS = struct.Struct("<16i")
CONTEXT_PARAMS = struct.Struct("<16i")
MODEL_INFO = struct.Struct("<24q")


@dataclass(frozen=True)
class ModelParams:
    """Load options (see wl_model_params). Native-only fields are validated by the backend."""

    n_gpu_layers: int = 0
    main_gpu: int = 0
    split_mode: int = 1  # llama_split_mode LAYER
    use_mmap: bool = True
    use_mlock: bool = False
    vocab_only: bool = False
    check_tensors: bool = False

    def pack(self) -> bytes:
        return MODEL_PARAMS.pack(
            self.n_gpu_layers, self.main_gpu, self.split_mode, int(self.use_mmap),
            int(self.use_mlock), int(self.vocab_only), int(self.check_tensors), *([0] * 9),
        )


@dataclass(frozen=True)
class ContextParams:
    """Context options (see wl_context_params)."""

    n_ctx: int = 0
    n_batch: int = 512
    n_ubatch: int = 512
    n_seq_max: int = 1
    n_threads: int = 0
    n_threads_batch: int = 0
    embeddings: bool = False
    flash_attn: int = -1
    type_k: int = -1
    type_v: int = -1
    offload_kqv: bool = True
    pooling_type: int = -1
    kv_unified: bool = False

    def pack(self) -> bytes:
        return CONTEXT_PARAMS.pack(
            self.n_ctx, self.n_batch, self.n_ubatch, self.n_seq_max, self.n_threads,
            self.n_threads_batch, int(self.embeddings), self.flash_attn, self.type_k, self.type_v,
            int(self.offload_kqv), self.pooling_type, int(self.kv_unified), 0, 0, 0,
        )


@dataclass(frozen=True)
class SamplerStep:
    """One sampler of a chain, as wl_sampler_chain_add takes it."""

    type: int
    floats: tuple[float, ...] = ()
    ints: tuple[int, ...] = ()
    text: bytes = b""


@dataclass(frozen=True)
class SamplerParams:
    """Sampling options; `steps()` is the sampler chain they make. temperature <= 0 means greedy."""

    seed: int = 0xFFFFFFFF
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    penalty_last_n: int = 64
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0

    @property
    def penalised(self) -> bool:
        return self.repeat_penalty != 1.0 or self.frequency_penalty != 0.0 or self.presence_penalty != 0.0

    def steps(self) -> list[SamplerStep]:
        """llama.cpp's common order: penalties, then greedy — or truncate, temperature, draw."""
        out = []
        if self.penalised:
            out.append(SamplerStep(SAMPLER_PENALTIES, (self.repeat_penalty, self.frequency_penalty,
                                                       self.presence_penalty), (self.penalty_last_n,)))
        if self.temperature <= 0:
            return [*out, SamplerStep(SAMPLER_GREEDY)]
        if self.top_k > 0:
            out.append(SamplerStep(SAMPLER_TOP_K, (), (self.top_k,)))
        if self.typical_p < 1.0:
            out.append(SamplerStep(SAMPLER_TYPICAL, (self.typical_p,), (1,)))
        if self.top_p < 1.0:
            out.append(SamplerStep(SAMPLER_TOP_P, (self.top_p,), (1,)))
        if self.min_p > 0.0:
            out.append(SamplerStep(SAMPLER_MIN_P, (self.min_p,), (1,)))
        out.append(SamplerStep(SAMPLER_TEMP, (self.temperature,)))
        seed = self.seed & 0xFFFFFFFF
        out.append(SamplerStep(SAMPLER_DIST, (), (seed - 2**32 if seed >= 2**31 else seed,)))  # a uint32, as int32
        return out


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

    @classmethod
    def unpack(cls, raw: bytes) -> ModelInfo:
        v = MODEL_INFO.unpack(raw)
        return cls(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11], v[12],
                   bool(v[13]), bool(v[14]), bool(v[15]), bool(v[16]), v[17])
