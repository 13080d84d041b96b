"""The crafted hostile GGUFs: each public llama.cpp / GGUF vulnerability pattern, as one or more
files made from a small real model (`base`: a synthetic llama, a real 32k SentencePiece vocab).

A case is (name, bytes, pattern): loading the bytes must raise a WasillamaError whose message
matches the pattern (it names the problem), or, for `survives` cases (files llama.cpp may
accept), load and generate or fail cleanly. The patterns are what llama.cpp's own checks say;
where it has none, what the sandbox says (a guest assert becomes a load error)."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from gguf_craft import (
    ARRAY,
    BOOL,
    F32,
    FLOAT32,
    FLOAT64,
    INT8,
    INT16,
    INT32,
    INT64,
    KV,
    STRING,
    UINT8,
    UINT16,
    UINT32,
    UINT64,
    Gguf,
    Tensor,
    array,
    array_items,
    kv,
    string,
    string_array,
    strings_of,
    u32,
    u64,
)


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    pattern: str          # what the error message must match
    survives: bool = False  # llama.cpp may accept the file: any clean outcome


HUGE = [2**31, 2**32, 2**32 + 1, 2**40, 2**62, 2**63, 2**64 - 1]
ELEMENT_TYPES = {"u8": UINT8, "i8": INT8, "u16": UINT16, "i16": INT16, "u32": UINT32, "i32": INT32, "f32": FLOAT32,
                 "bool": BOOL, "str": STRING, "u64": UINT64, "i64": INT64, "f64": FLOAT64}
ARCH = "llama"

# what llama.cpp's loader says, by kind of problem
BAD_HEADER = r"magic|version|failed to read|key-value|tensor info|header"
BAD_KV = r"key-value|KV|string|array|type|failed to read"
BAD_TENSOR = r"tensor|dimension|shape|overflow|offset|type|failed to read|alignment|data"
BAD_MODEL = r"load|tensor|shape|layer|head|n_rot|embd|key|vocab|array|dimension|assert|abort|invalid|not found|wrong"
BAD_VOCAB = r"vocab|token|tokenizer|load|merge|score|array|assert|abort|invalid"


def header_cases() -> Iterator[Case]:
    for version in (0, 1, 4, 2**31, 2**32 - 1):
        yield Case(f"header/version={version}", b"GGUF" + u32(version) + u64(0) + u64(0) + bytes(32), r"version")
    for n in HUGE:
        yield Case(f"header/n_tensors={n}", b"GGUF" + u32(3) + u64(n) + u64(0) + bytes(64), r"tensor")
        yield Case(f"header/n_kv={n}", b"GGUF" + u32(3) + u64(0) + u64(n) + bytes(64), r"key.value|KV")
    for magic in (b"FUGG", b"GGML", b"ggjt", b"\0\0\0\0", b"GGU\0"):
        yield Case(f"header/magic={magic!r}", magic + u32(3) + u64(0) + u64(0) + bytes(32), r"magic")
    for cut in (3, 4, 8, 12, 20, 23):
        yield Case(f"header/cut-at-{cut}", (b"GGUF" + u32(3) + u64(1) + u64(1))[:cut], BAD_HEADER + "|read")


def kv_cases(base: Gguf) -> Iterator[Case]:
    def appended(extra: bytes) -> bytes:
        """The base file with one more KV, `extra` (raw bytes), after its last."""
        g = base.copy(n_kv=len(base.kvs) + 1)
        g.extra_kv = extra
        return g.encode()

    for n in HUGE:
        yield Case(f"kv/key-length={n}", appended(u64(n) + b"general.x"), BAD_KV)
        yield Case(f"kv/string-length={n}", appended(string("general.x") + u32(STRING) + u64(n) + b"abc"), BAD_KV)
    for vtype in (13, 14, 100, 2**31, 2**32 - 1):
        yield Case(f"kv/value-type={vtype}", appended(string("general.x") + u32(vtype) + u64(0)), BAD_KV)
    for name, sub in ELEMENT_TYPES.items():
        for n in (2**31, 2**32, 2**62, 2**64 - 1):
            yield Case(f"kv/array-{name}-count={n}", appended(string("general.x") + u32(ARRAY) + u32(sub) + u64(n)
                                                              + bytes(16)), BAD_KV)
    for sub in (ARRAY, 13, 2**31):
        yield Case(f"kv/array-of-type-{sub}", appended(string("general.x") + u32(ARRAY) + array(sub, [bytes(8)])),
                   BAD_KV)
    yield Case("kv/string-array-element-length=2^63",
               appended(string("general.x") + u32(ARRAY) + u32(STRING) + u64(2) + string("ok") + u64(2**63) + b"x"),
               BAD_KV)
    yield Case("kv/duplicate-key", appended(kv("general.architecture", STRING, ARCH).encode()), r"duplicate")
    yield Case("kv/empty-key", appended(kv("", UINT32, 1).encode()), BAD_KV + "|empty", survives=True)
    yield Case("kv/key-not-utf8", appended(KV(b"general.\xff\xfe", UINT32, u32(1)).encode()), BAD_KV, survives=True)
    yield Case("kv/count-one-more", base.copy(n_kv=len(base.kvs) + 1).encode(), BAD_KV + "|tensor")
    yield Case("kv/count-one-less", base.copy(n_kv=len(base.kvs) - 1).encode(), BAD_KV + "|" + BAD_TENSOR)
    for value in (0, 3, 24, 2**31, 2**32 - 1):
        g = base.copy().set(kv("general.alignment", UINT32, value))
        yield Case(f"kv/alignment={value}", g.encode(), r"alignment|data section")
    yield Case("kv/alignment-as-string", base.copy().set(kv("general.alignment", STRING, "32")).encode(),
               r"alignment|type")


def tensor_cases(base: Gguf) -> Iterator[Case]:
    def changed(fn: Callable[[Gguf], object]) -> bytes:
        g = base.copy()
        fn(g)
        return g.encode()

    for n_dims in (0, 5, 2**31, 2**32 - 1):
        def lie(g: Gguf, n: int = n_dims) -> None:
            t = g.tensor("token_embd.weight")
            t.n_dims, t.dims = n, t.dims + [1] * max(0, min(n, 5) - len(t.dims))
        yield Case(f"tensor/n_dims={n_dims}", changed(lie), BAD_TENSOR)
    for name in ("token_embd.weight", "output.weight", "blk.0.attn_q.weight", "blk.1.ffn_down.weight"):
        for dim, value in ((0, 0), (0, 2**63), (1, 2**62), (0, 2**64 - 1), (1, 2**32), (1, 2**31 + 7)):
            def resize(g: Gguf, name: str = name, dim: int = dim, value: int = value) -> None:
                g.tensor(name).dims[dim] = value
            yield Case(f"tensor/{name}-dim{dim}={value}", changed(resize), BAD_TENSOR + "|" + BAD_MODEL)
    for ttype in (4, 5, 6, 40, 1000, 2**31):
        def retype(g: Gguf, ttype: int = ttype) -> None:
            g.tensor("blk.0.attn_k.weight").ggml_type = ttype
        yield Case(f"tensor/type={ttype}", changed(retype), r"type|offset")
    yield Case("tensor/type-f32-for-q8-data", changed(lambda g: setattr(g.tensor("blk.0.attn_v.weight"), "ggml_type",
                                                                         F32)), BAD_TENSOR + "|" + BAD_MODEL)
    for offset in (1, 3, 2**40, 2**63, 2**64 - 32):
        def move(g: Gguf, offset: int = offset) -> None:
            t = g.tensors[-1]
            t.offset = t.offset + offset if offset < 64 else offset
        yield Case(f"tensor/last-offset+={offset}", changed(move), r"offset|alignment|bounds|data|size")
    yield Case("tensor/offsets-overlap", changed(lambda g: setattr(g.tensors[1], "offset", g.tensors[0].offset)),
               r"offset|data|size")
    yield Case("tensor/duplicate-name", changed(lambda g: setattr(g.tensors[1], "name", g.tensors[0].name)),
               r"duplicate")
    yield Case("tensor/name-empty", changed(lambda g: setattr(g.tensors[0], "name", b"")), BAD_TENSOR + "|" + BAD_MODEL)
    yield Case("tensor/name-64-chars", changed(lambda g: setattr(g.tensors[0], "name", b"t" * 64)), r"name|tensor")
    yield Case("tensor/name-1M-chars", changed(lambda g: setattr(g.tensors[0], "name", b"t" * 2**20)), r"name|tensor")
    yield Case("tensor/count-one-more", base.copy(n_tensors=len(base.tensors) + 1).encode(), BAD_TENSOR)
    # without its last tensor info (output.weight) the model ties its output to the embeddings
    yield Case("tensor/count-one-less", base.copy(n_tensors=len(base.tensors) - 1).encode(), BAD_TENSOR, survives=True)
    yield Case("tensor/data-cut", base.encode()[: -4096], r"data|offset|bounds|size|truncat|incomplete|read")
    # sizes that wrap a 32-bit size_t: the guest's allocator must not get the remainder
    for rows in (2**26 + 1, 2**27, 2**30):
        def wrap(g: Gguf, rows: int = rows) -> None:
            t = g.tensor("token_embd.weight")
            t.dims = [t.dims[0], rows]
        yield Case(f"tensor/wrap-32bit-rows={rows}", changed(wrap), BAD_TENSOR + "|" + BAD_MODEL + "|size|memory")


def hparam_cases(base: Gguf) -> Iterator[Case]:
    def with_kv(item: KV) -> bytes:
        return base.copy().set(item).encode()

    p = ARCH + "."
    for value in (0, 3, 513, 1000, 2**31 - 1, 2**32 - 1):
        yield Case(f"hparams/block_count={value}", with_kv(kv(p + "block_count", UINT32, value)), BAD_MODEL)
    for key in ("attention.head_count", "attention.head_count_kv", "embedding_length", "feed_forward_length",
                "context_length", "rope.dimension_count", "vocab_size"):
        for value in (0, 3, 2**31 - 1, 2**32 - 1):
            yield Case(f"hparams/{key}={value}", with_kv(kv(p + key, UINT32, value)), BAD_MODEL, survives=True)
    # per-layer arrays: as long as block_count says, or not; longer than LLAMA_MAX_LAYERS (512)
    for n in (1, 3, 513, 4096):
        yield Case(f"hparams/head_count-array-of-{n}",
                   with_kv(KV((p + "attention.head_count").encode(), ARRAY, array(UINT32, [u32(4)] * n))), BAD_MODEL)
    yield Case("hparams/head_count-array-of-strings",
               with_kv(KV((p + "attention.head_count").encode(), ARRAY, string_array(["4", "4"]))), BAD_MODEL + "|type")
    retyped: list[tuple[str, int, float | int | str]] = [("block_count", STRING, "2"), ("block_count", FLOAT32, 2.0),
                              ("attention.layer_norm_rms_epsilon", STRING, "1e-5"),
                              ("embedding_length", INT8, -1), ("block_count", INT64, -1)]
    for key, vtype, typed in retyped:
        yield Case(f"hparams/{key}-as-type-{vtype}", with_kv(kv(p + key, vtype, typed)), BAD_MODEL + "|type")
    for eps in (float("inf"), -1.0, 0.0, 1e30):
        yield Case(f"hparams/rms_eps={eps}", with_kv(kv(p + "attention.layer_norm_rms_epsilon", FLOAT32, eps)),
                   BAD_MODEL, survives=True)
    for arch in ("", "nosucharch", "bert", "gemma", "qwen2", "mamba", "t5", "rwkv6", "plamo2", "llama" * 1000):
        g = base.copy().set(kv("general.architecture", STRING, arch))
        yield Case(f"hparams/architecture={arch[:16]}", g.encode(), r"architecture|unknown|key|not found|tensor|load")
    yield Case("hparams/no-architecture", base.copy().drop("general.architecture").encode(), r"architecture|key")


def vocab_cases(base: Gguf) -> Iterator[Case]:
    tokens = strings_of(base.get("tokenizer.ggml.tokens"))
    _, n_scores, scores = array_items(base.get("tokenizer.ggml.scores"))

    def with_kv(*items: KV, drop: tuple[str, ...] = ()) -> bytes:
        g = base.copy()
        for key in drop:
            g.drop(key)
        for item in items:
            g.set(item)
        return g.encode()

    def tokens_kv(values: list[bytes], count: int | None = None) -> KV:
        return KV(b"tokenizer.ggml.tokens", ARRAY, array(STRING, (string(v) for v in values), count))

    yield Case("vocab/no-tokens", with_kv(drop=("tokenizer.ggml.tokens",)), BAD_VOCAB)
    yield Case("vocab/zero-tokens", with_kv(tokens_kv([])), BAD_VOCAB)
    yield Case("vocab/one-token", with_kv(tokens_kv(tokens[:1])), BAD_VOCAB)
    yield Case("vocab/half-the-tokens", with_kv(tokens_kv(tokens[: len(tokens) // 2])), BAD_VOCAB)
    yield Case("vocab/token-1MiB", with_kv(tokens_kv([b"x" * 2**20, *tokens[1:]])), BAD_VOCAB, survives=True)
    yield Case("vocab/token-empty", with_kv(tokens_kv([b"", *tokens[1:]])), BAD_VOCAB, survives=True)
    yield Case("vocab/token-invalid-utf8", with_kv(tokens_kv([tokens[0], b"\xff\xfe\xfd", *tokens[2:]])), BAD_VOCAB,
               survives=True)
    yield Case("vocab/tokens-count-lies", with_kv(tokens_kv(tokens, count=len(tokens) + 10)), BAD_VOCAB + "|" + BAD_KV)
    yield Case("vocab/byte-token-malformed", with_kv(tokens_kv([*tokens[:3], b"<0xZZ>", *tokens[4:]])), BAD_VOCAB,
               survives=True)
    yield Case("vocab/scores-short", with_kv(KV(b"tokenizer.ggml.scores", ARRAY,
                                                u32(FLOAT32) + u64(10) + scores[:40])), BAD_VOCAB)
    yield Case("vocab/scores-as-strings", with_kv(KV(b"tokenizer.ggml.scores", ARRAY, string_array(["0"] * n_scores))),
               BAD_VOCAB + "|type")
    yield Case("vocab/token-type-short", with_kv(KV(b"tokenizer.ggml.token_type", ARRAY, array(INT32, [u32(1)] * 5))),
               BAD_VOCAB)
    yield Case("vocab/token-type-999", with_kv(KV(b"tokenizer.ggml.token_type", ARRAY,
                                                  array(INT32, [u32(999)] * len(tokens)))), BAD_VOCAB, survives=True)
    for model in ("", "nosuchtokenizer", "gpt2", "bert", "t5", "rwkv", "ugm", "plamo2"):
        yield Case(f"vocab/model={model}", with_kv(kv("tokenizer.ggml.model", STRING, model)), BAD_VOCAB,
                   survives=model in ("bert", "t5", "ugm", "rwkv", "plamo2"))
    # gpt2 merges that are not "a b" pairs, or name tokens that do not exist
    for merges in ([b"nospace"], [b"a b c"], [b" "], [b"\xff \xfe"], [b"x" * 2**16 + b" y"]):
        yield Case(f"vocab/gpt2-merges={merges[0][:12]!r}",
                   with_kv(kv("tokenizer.ggml.model", STRING, "gpt2"),
                           KV(b"tokenizer.ggml.merges", ARRAY, string_array(merges))), BAD_VOCAB, survives=True)
    # PLaMo-2's tokenizer builds tables from the scores and byte tokens (an out-of-bounds write
    # upstream); long pieces make building them take many minutes: only the deadline ends that
    for variant, toks in (("bytes-only", [f"<0x{i:02X}>".encode() for i in range(256)]),
                          ("no-bytes", [b"a", b"b", b"ab"]),
                          ("long-pieces", [b"a" * 5000, b"b" * 5000, *[f"<0x{i:02X}>".encode() for i in range(256)]]),
                          ("duplicates", [b"a"] * 300)):
        n = len(toks)
        yield Case(f"vocab/plamo2-{variant}",
                   with_kv(kv("tokenizer.ggml.model", STRING, "plamo2"), tokens_kv(toks),
                           KV(b"tokenizer.ggml.scores", ARRAY, array(FLOAT32, [struct.pack("<f", -float(i)) for i in
                                                                                range(n)])),
                           KV(b"tokenizer.ggml.token_type", ARRAY,
                              array(INT32, [u32(6 if t.startswith(b"<0x") else 1) for t in toks])),
                           kv("tokenizer.ggml.bos_token_id", UINT32, 0), kv("tokenizer.ggml.eos_token_id", UINT32, 1)),
                   BAD_VOCAB, survives=True)
    for key in ("bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id", "eot_token_id"):
        for value in (len(tokens), 2**31, 2**32 - 1):
            yield Case(f"vocab/{key}={value}", with_kv(kv("tokenizer.ggml." + key, UINT32, value)), BAD_VOCAB,
                       survives=True)


def all_cases(base: Gguf) -> list[Case]:
    cases = [*header_cases(), *kv_cases(base), *tensor_cases(base), *hparam_cases(base), *vocab_cases(base)]
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return cases


__all__ = ["Case", "Tensor", "all_cases"]
