"""Tiny synthetic GGUF models for tests, written with the `gguf` package.

Real llama.cpp architectures with random weights (fixed numpy seed) and a real vocabulary
copied from one of llama.cpp's vocab-only GGUFs, so tokenization is exactly llama.cpp's.
They load in a fraction of a second and generate fast, and two writes with the same
arguments give the same bytes.

    path = write_llama(tmp / "m.gguf", vocab=vocab_gguf, seed=0, n_layer=2, qtype="f16")
"""

from __future__ import annotations

import functools
import struct
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

try:
    import gguf
except ImportError:  # pragma: no cover - the tests that need it skip
    gguf = None  # type: ignore[assignment]

REPO_ROOT = Path(__file__).resolve().parents[1]

# The vocab the synthetic models use by default: SentencePiece llama, 32000 tokens, byte fallback.
DEFAULT_VOCAB = "ggml-vocab-llama-spm.gguf"

QTYPES = ("f32", "f16", "q8_0", "q4_0", "q4_1", "q4_k")


def row_multiple(qtype: str) -> int:
    """What n_embd and n_ff must be multiples of for qtype's blocks."""
    return {"q4_k": 256, "q8_0": 32, "q4_0": 32, "q4_1": 32}.get(qtype, 1)


@functools.lru_cache(maxsize=1)
def pinned_llama_cpp_dir() -> Path:
    """The pinned llama.cpp tree (downloaded and sha256-checked once by the repository script)."""
    proc = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "llama_cpp_source.sh")],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"scripts/llama_cpp_source.sh failed ({proc.returncode}): {proc.stderr.strip()}")
    path = Path(proc.stdout.strip().splitlines()[-1])
    if not (path / "models").is_dir():
        raise RuntimeError(f"scripts/llama_cpp_source.sh printed {path}, which has no models/ folder")
    return path


@dataclass(frozen=True)
class LlamaShape:
    """What a synthetic llama model was written with (what the tests compare metadata against)."""

    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_ctx_train: int
    qtype: str
    seed: int


def _require_gguf() -> Any:
    if gguf is None:
        raise ImportError("the `gguf` package is needed to write synthetic models (pip install gguf==0.19.0)")
    return gguf


def read_tokenizer_fields(vocab_gguf: str | Path) -> list[tuple[str, Any, Any, Any]]:
    """(key, value, type, array subtype) of every tokenizer.* field of a GGUF (cached: reading
    a 32k-token vocab with GGUFReader takes seconds)."""
    p = Path(vocab_gguf).resolve()
    return list(_read_tokenizer_fields(str(p), p.stat().st_mtime_ns))


@functools.lru_cache(maxsize=8)
def _read_tokenizer_fields(path: str, mtime_ns: int) -> tuple[tuple[str, Any, Any, Any], ...]:
    g = _require_gguf()
    reader = g.GGUFReader(path)
    out = []
    for name, field in reader.fields.items():
        if not name.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == g.GGUFValueType.ARRAY else None
        out.append((name, field.contents(), vtype, sub))
    return tuple(out)


def _n_vocab(fields: Sequence[tuple[str, Any, Any, Any]]) -> int:
    for name, value, _, _ in fields:
        if name == "tokenizer.ggml.tokens":
            return len(value)
    raise ValueError("the vocab GGUF has no tokenizer.ggml.tokens")


def _add_fields(writer: Any, fields: Sequence[tuple[str, Any, Any, Any]]) -> None:
    for name, value, vtype, sub in fields:
        writer.add_key_value(name, value, vtype, sub_type=sub)


def _random_q4_k(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """(rows, cols / 256 * 144) bytes of Q4_K blocks: random 6-bit scales and mins, random quants,
    and d, dmin chosen so a weight is about N(0, 1 / cols) with mean near 0 (dmin = 7.5 d offsets
    the mean of the unsigned quants)."""
    if cols % 256:
        raise ValueError("Q4_K rows must be multiples of 256")
    blocks = rows * cols // 256
    d = np.float16(1.0 / (np.sqrt(cols) * 120.0))
    raw = np.empty((blocks, 144), dtype=np.uint8)
    raw[:, 0:4] = np.array([d, 7.5 * float(d)], dtype="<f2").view(np.uint8)  # d, dmin
    raw[:, 4:] = rng.integers(0, 256, size=(blocks, 140), dtype=np.uint8)
    return raw.reshape(rows, cols // 256 * 144)


def write_llama(path: str | Path, *, vocab: str | Path | None = None, seed: int = 0, n_layer: int = 2,
                n_embd: int = 128, n_head: int = 4, n_head_kv: int = 2, n_ff: int = 256,
                n_ctx_train: int = 512, qtype: str = "f16", name: str = "wasillama-synthetic-llama",
                rope_freq_base: float = 10000.0, tie_embeddings: bool = False) -> Path:
    """Write a random-weight "llama" GGUF and return its path.

    qtype: "f32" (every tensor F32), "f16" (matrices F16, norms F32), "q8_0", "q4_0" or "q4_1"
    (matrices quantized by gguf.quants.quantize, norms F32; n_embd and n_ff multiples of 32), or
    "q4_k" (matrices of random Q4_K blocks, which gguf cannot quantize to; multiples of 256).
    vocab: a vocab-only GGUF whose tokenizer.* fields are copied (default: the pinned tree's
    ggml-vocab-llama-spm.gguf).
    tie_embeddings: no output.weight, so llama.cpp projects with token_embd as Llama 3.2 1B does.
    """
    g = _require_gguf()
    if qtype not in QTYPES:
        raise ValueError(f"qtype must be one of {QTYPES}")
    if n_embd % n_head or n_head % n_head_kv:
        raise ValueError("n_embd must divide by n_head, n_head by n_head_kv")
    if vocab is None:
        vocab = pinned_llama_cpp_dir() / "models" / DEFAULT_VOCAB
    fields = read_tokenizer_fields(vocab)
    n_vocab = _n_vocab(fields)
    head_dim = n_embd // n_head
    rng = np.random.default_rng(seed)

    def matrix(rows: int, cols: int) -> np.ndarray:
        # numpy (rows, cols) is ggml ne = [cols, rows]: `cols` inputs, `rows` outputs
        out: np.ndarray = (rng.standard_normal((rows, cols), dtype=np.float32) / np.sqrt(cols)).astype(np.float32)
        return out

    def norm() -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(n_embd, dtype=np.float32)).astype(np.float32)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    writer = g.GGUFWriter(str(tmp), "llama")
    writer.add_name(name)
    writer.add_context_length(n_ctx_train)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(rope_freq_base)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type({"f32": g.LlamaFileType.ALL_F32, "f16": g.LlamaFileType.MOSTLY_F16,
                          "q8_0": g.LlamaFileType.MOSTLY_Q8_0, "q4_0": g.LlamaFileType.MOSTLY_Q4_0,
                          "q4_1": g.LlamaFileType.MOSTLY_Q4_1, "q4_k": g.LlamaFileType.MOSTLY_Q4_K_M}[qtype])
    _add_fields(writer, fields)

    def add_matrix(tname: str, data: np.ndarray) -> None:
        if qtype == "f32":
            writer.add_tensor(tname, data)
        elif qtype == "f16":
            writer.add_tensor(tname, data.astype(np.float16))
        elif qtype == "q4_k":
            q = _random_q4_k(rng, *data.shape)
            writer.add_tensor(tname, q, raw_shape=q.shape, raw_dtype=g.GGMLQuantizationType.Q4_K)
        else:
            qt = getattr(g.GGMLQuantizationType, qtype.upper())
            q = g.quants.quantize(data, qt)
            writer.add_tensor(tname, q, raw_shape=q.shape, raw_dtype=qt)

    add_matrix("token_embd.weight", matrix(n_vocab, n_embd))
    for i in range(n_layer):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", norm())
        add_matrix(f"blk.{i}.attn_q.weight", matrix(n_embd, n_embd))
        add_matrix(f"blk.{i}.attn_k.weight", matrix(n_head_kv * head_dim, n_embd))
        add_matrix(f"blk.{i}.attn_v.weight", matrix(n_head_kv * head_dim, n_embd))
        add_matrix(f"blk.{i}.attn_output.weight", matrix(n_embd, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", norm())
        add_matrix(f"blk.{i}.ffn_gate.weight", matrix(n_ff, n_embd))
        add_matrix(f"blk.{i}.ffn_up.weight", matrix(n_ff, n_embd))
        add_matrix(f"blk.{i}.ffn_down.weight", matrix(n_embd, n_ff))
    writer.add_tensor("output_norm.weight", norm())
    if not tie_embeddings:
        # a larger output scale than 1/sqrt(n) gives peaked, varied logits rather than near-uniform ones
        add_matrix("output.weight", matrix(n_vocab, n_embd) * 4.0)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(path)
    return path


def llama_shape(*, vocab: str | Path, seed: int = 0, n_layer: int = 2, n_embd: int = 128, n_head: int = 4,
                n_head_kv: int = 2, n_ff: int = 256, n_ctx_train: int = 512, qtype: str = "f16") -> LlamaShape:
    """The facts write_llama records for the same arguments."""
    return LlamaShape(n_vocab=_n_vocab(read_tokenizer_fields(vocab)), n_embd=n_embd, n_layer=n_layer,
                      n_head=n_head, n_head_kv=n_head_kv, n_ff=n_ff, n_ctx_train=n_ctx_train, qtype=qtype,
                      seed=seed)


_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # gguf_type -> bytes
_T_STRING, _T_ARRAY, _T_UINT32 = 8, 9, 4
_DEFAULT_ALIGNMENT = 32


class _Cursor:
    def __init__(self, data: bytes | memoryview) -> None:
        self.data, self.pos = data, 0

    def take(self, fmt: str) -> Any:
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values[0] if len(values) == 1 else values

    def string(self) -> bytes:
        n = self.take("Q")
        s = bytes(self.data[self.pos: self.pos + n])
        self.pos += n
        return s

    def skip_value(self, vtype: int) -> None:
        if vtype == _T_STRING:
            n = self.take("Q")
            self.pos += n
        elif vtype == _T_ARRAY:
            sub, count = self.take("IQ")
            if sub in _SCALAR_SIZES:
                self.pos += _SCALAR_SIZES[sub] * count
            else:
                for _ in range(count):
                    self.skip_value(sub)
        else:
            self.pos += _SCALAR_SIZES[vtype]


@dataclass(frozen=True)
class GGUFLayout:
    """Where things are in a GGUF file (v2/v3, little-endian)."""

    version: int
    n_kv: int
    kv_end: int  # end of the key-value section, where the tensor infos start
    alignment: int
    data_start: int  # start of the tensor data section
    # (name, raw info bytes up to the offset field, offset in the data section, nbytes)
    tensors: tuple[tuple[str, bytes, int, int], ...]
    # key -> (gguf_type, offset of the value in the file)
    kv_values: dict[str, tuple[int, int]]


def gguf_layout(raw: bytes) -> GGUFLayout:
    g = _require_gguf()
    cur = _Cursor(raw)
    magic, version, n_tensors, n_kv = cur.take("4sIQQ")
    if magic != b"GGUF" or version < 2:
        raise ValueError("not a GGUF v2+ file")
    alignment = _DEFAULT_ALIGNMENT
    kv_values = {}
    for _ in range(n_kv):
        key = cur.string()
        vtype = cur.take("I")
        kv_values[key.decode("utf-8", "replace")] = (vtype, cur.pos)
        if key == b"general.alignment" and vtype == _T_UINT32:
            alignment = struct.unpack_from("<I", raw, cur.pos)[0]
        cur.skip_value(vtype)
    kv_end = cur.pos
    tensors = []
    for _ in range(n_tensors):
        start = cur.pos
        name = cur.string().decode("utf-8")
        n_dims = cur.take("I")
        dims = [cur.take("Q") for _ in range(n_dims)]
        ttype = cur.take("I")
        head = raw[start: cur.pos]
        offset = cur.take("Q")
        block, type_size = g.GGML_QUANT_SIZES[g.GGMLQuantizationType(ttype)]
        n_elements = 1
        for d in dims:
            n_elements *= d
        tensors.append((name, head, offset, n_elements // block * type_size))
    data_start = -(-cur.pos // alignment) * alignment
    return GGUFLayout(version, n_kv, kv_end, alignment, data_start, tuple(tensors), kv_values)


def write_without_tensor(src_gguf: str | Path, dst: str | Path, tensor_name: str) -> Path:
    """Copy a GGUF (v2/v3, little-endian) without one tensor: its tensor info and its data are
    dropped, the later tensors' offsets move down; every other byte is kept as it was."""
    raw = Path(src_gguf).read_bytes()
    layout = gguf_layout(raw)
    if tensor_name not in [t[0] for t in layout.tensors]:
        raise KeyError(f"{src_gguf} has no tensor {tensor_name!r}")

    def pad(n: int) -> int:
        return -(-n // layout.alignment) * layout.alignment

    kept = [t for t in layout.tensors if t[0] != tensor_name]
    out = bytearray(struct.pack("<4sIQQ", b"GGUF", layout.version, len(kept), layout.n_kv))
    out += raw[24: layout.kv_end]
    new_offset = 0
    for _, head, _, nbytes in kept:
        out += head + struct.pack("<Q", new_offset)
        new_offset += pad(nbytes)
    out += bytes(pad(len(out)) - len(out))
    for _, _, offset, nbytes in kept:
        start = layout.data_start + offset
        out += raw[start: start + nbytes] + bytes(pad(nbytes) - nbytes)
    dst = Path(dst)
    dst.write_bytes(bytes(out))
    return dst


_SCALAR_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def with_scalar(raw: bytes, key: str, value: float | int | bool) -> bytes:
    """A copy of a GGUF's bytes with one scalar key-value set to `value` (in place, same type)."""
    vtype, pos = gguf_layout(raw).kv_values[key]
    if vtype not in _SCALAR_FORMATS:
        raise TypeError(f"{key} is not a scalar (gguf type {vtype})")
    out = bytearray(raw)
    struct.pack_into("<" + _SCALAR_FORMATS[vtype], out, pos, value)
    return bytes(out)


def with_tensor_dim(raw: bytes, tensor_name: str, dim: int, value: int) -> bytes:
    """A copy of a GGUF's bytes with one dimension of one tensor's shape changed (ggml order)."""
    layout = gguf_layout(raw)
    start = raw.find(layout_tensor_head(layout, tensor_name), layout.kv_end)
    name_len = struct.unpack_from("<Q", raw, start)[0]
    dims_at = start + 8 + name_len + 4
    out = bytearray(raw)
    struct.pack_into("<Q", out, dims_at + 8 * dim, value)
    return bytes(out)


def layout_tensor_head(layout: GGUFLayout, tensor_name: str) -> bytes:
    for name, head, _, _ in layout.tensors:
        if name == tensor_name:
            return head
    raise KeyError(tensor_name)


def truncate_layers(src: str | Path, dst: str | Path, layers: int | Sequence[int]) -> Path:
    """A copy of a GGUF decoder with fewer blocks (a draft model for speculative decoding that
    shares the vocabulary and the embeddings): its first `layers` blocks, or the blocks listed
    (renumbered in order); every other tensor and field as is, <arch>.block_count to match."""
    return copy_gguf(src, dst, layers=layers)


def copy_gguf(src: str | Path, dst: str | Path, *, layers: int | Sequence[int] | None = None,
              strings: Mapping[str, str] | None = None, split_max_tensors: int = 0) -> Path:
    """A copy of a GGUF decoder: with only some of its blocks (see truncate_layers), and/or with
    string fields set to `strings` (e.g. another tokenizer.chat_template). split_max_tensors > 0
    writes it split as llama.cpp's gguf-split does: `dst` is then the stem, the parts are named
    <stem>-00001-of-0000N.gguf beside it, and the first part's path is returned."""
    g = _require_gguf()
    reader = g.GGUFReader(str(src))
    arch = reader.fields["general.architecture"].contents()
    n_blocks = int(reader.fields[f"{arch}.block_count"].contents())
    keep = list(range(n_blocks)) if layers is None else list(range(layers)) if isinstance(layers, int) else list(layers)
    index = {old: new for new, old in enumerate(keep)}
    strings = dict(strings or {})
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    writer = g.GGUFWriter(str(dst), arch, split_max_tensors=split_max_tensors)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture" or name in strings:
            continue
        value = len(keep) if name == f"{arch}.block_count" else field.contents()
        vtype = field.types[0]
        writer.add_key_value(name, value, vtype, sub_type=field.types[-1] if vtype == g.GGUFValueType.ARRAY else None)
    for name, text in strings.items():
        writer.add_string(name, text)
    for t in reader.tensors:
        name = t.name
        if name.startswith("blk."):
            _, i, rest = name.split(".", 2)
            if int(i) not in index:
                continue
            name = f"blk.{index[int(i)]}.{rest}"
        # as read: quantized data comes as rows of bytes, which add_tensor turns back into a shape
        writer.add_tensor(name, np.asarray(t.data), raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    if split_max_tensors:
        return sorted(Path(dst).parent.glob(Path(dst).stem + "-00001-of-*.gguf"))[0]
    return Path(dst)


def write_lora(path: str | Path, *, n_layer: int = 2, n_embd: int = 128, n_ff: int = 256, rank: int = 8,
               alpha: float = 16.0, seed: int = 0, strength: float = 1.0, arch: str = "llama",
               dtype: type[np.generic] = np.float32) -> Path:
    """A random LoRA adapter GGUF for write_llama's model of these sizes: attn_q and ffn_down of
    every block get lora_a (numpy (rank, n_in)) and lora_b ((n_out, rank)), of `dtype`."""
    g = _require_gguf()
    rng = np.random.default_rng(seed)
    writer = g.GGUFWriter(str(path), arch)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", alpha)
    for i in range(n_layer):
        for name, n_in, n_out in (("attn_q", n_embd, n_embd), ("ffn_down", n_ff, n_embd)):
            a = (rng.standard_normal((rank, n_in)) / np.sqrt(n_in)).astype(dtype)
            b = (strength * rng.standard_normal((n_out, rank)) / np.sqrt(rank)).astype(dtype)
            writer.add_tensor(f"blk.{i}.{name}.weight.lora_a", a)
            writer.add_tensor(f"blk.{i}.{name}.weight.lora_b", b)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)
