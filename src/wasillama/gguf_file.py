"""What the host reads of a GGUF file itself: the header's metadata (for `wasillama models`) and
the layout of a split model's parts (which the host joins into one GGUF as it serves the bytes).

Everything else about a model file is read by llama.cpp inside the sandbox. This reader is pure
Python: a hostile header can make it raise `ModelLoadError`, never corrupt memory, and every
count and length in it is held to the bytes the file really has before anything is allocated.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from .errors import ModelLoadError

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
# llama.cpp's split naming: <prefix>-00001-of-00003.gguf (llama_split_path)
SPLIT_NAME = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")

# gguf_type: fixed-size scalars by id (8 string, 9 array)
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_MAX_DIMS = 4  # GGML_MAX_DIMS
# Bounds on what a header may list, far above any real model (vocabularies have ~260k tokens,
# merges ~500k, models ~10k tensors) and low enough that a hostile header costs seconds at most.
MAX_ITEMS = 1 << 22

# llama_ftype -> the quant name people use (llama.cpp's llama_model_ftype_name, abridged)
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
    12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
    19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL",
    26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16",
    36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4",
}


@dataclass(frozen=True)
class Header:
    """A GGUF header as laid out in its file."""

    version: int
    size: int  # of the whole file
    values: dict[str, object]  # scalar and string metadata (arrays are left out, only their spans kept)
    kv_spans: tuple[tuple[str, int, int], ...]  # (key, start, end) of each key-value pair, in order
    tensor_spans: tuple[tuple[int, int], ...]  # (start, end) of each tensor info; its offset is the last 8 bytes
    alignment: int
    data_start: int  # where the tensor data begins

    @property
    def architecture(self) -> str | None:
        arch = self.values.get("general.architecture")
        return arch if isinstance(arch, str) else None

    @property
    def quant(self) -> str | None:
        ftype = self.values.get("general.file_type")
        return FILE_TYPES.get(ftype) if isinstance(ftype, int) else None


class _Reader:
    """Sequential reads from a file, bounded by its size."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self.f, self.size, self.pos = f, size, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.size:
            raise ModelLoadError(f"GGUF header runs past the end of the file (at byte {self.pos})")
        data = self.f.read(n)
        if len(data) != n:
            raise ModelLoadError("GGUF file is shorter than its size")
        self.pos += n
        return data

    def unpack(self, fmt: str) -> int | float | bool:
        value: int | float | bool = struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]
        return value

    def count(self, what: str, each: int) -> int:
        """A u64 count of items at least `each` bytes long, held to what the file has left."""
        n = int(self.unpack("Q"))
        if n * each > self.size - self.pos:
            raise ModelLoadError(f"GGUF header claims {n} {what}, more than the file can hold")
        if each > 1 and n > MAX_ITEMS:
            raise ModelLoadError(f"GGUF header claims {n} {what}, more than {MAX_ITEMS} (not a real model)")
        return n

    def string(self) -> str:
        return self.take(self.count("string bytes", 1)).decode("utf-8", "replace")

    def skip(self, n: int) -> None:
        if n < 0 or self.pos + n > self.size:
            raise ModelLoadError(f"GGUF header runs past the end of the file (at byte {self.pos})")
        self.f.seek(n, 1)
        self.pos += n

    def value(self, vtype: int) -> object:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype = int(self.unpack("I"))
            if etype in _SCALARS:
                width = struct.calcsize(_SCALARS[etype])
                self.skip(self.count("array items", width) * width)
            elif etype == _STRING:
                for _ in range(self.count("array strings", 8)):
                    self.skip(self.count("string bytes", 1))
            else:
                raise ModelLoadError(f"GGUF array of unknown type {etype}")
            return None
        raise ModelLoadError(f"GGUF metadata of unknown type {vtype}")


def read_header(path: str | Path) -> Header:
    """The header of the GGUF at `path` (ModelLoadError when it is not one)."""
    path = Path(path)
    with open(path, "rb", buffering=1 << 20) as f:
        size = f.seek(0, 2)
        f.seek(0)
        r = _Reader(f, size)
        if r.take(4) != MAGIC:
            raise ModelLoadError(f"{path} is not a GGUF file (bad magic)")
        version = int(r.unpack("I"))
        if version not in (2, 3):
            raise ModelLoadError(f"{path}: GGUF version {version} is not supported")
        n_tensors = r.count("tensors", 8 + 4 + 4 + 8)  # name length, n_dims, type, offset
        n_kv = r.count("key-value pairs", 8 + 4)
        values: dict[str, object] = {}
        kv_spans = []
        for _ in range(n_kv):
            start = r.pos
            key = r.string()
            value = r.value(int(r.unpack("I")))
            if value is not None:
                values[key] = value
            kv_spans.append((key, start, r.pos))
        tensor_spans = []
        for _ in range(n_tensors):
            start = r.pos
            r.skip(r.count("name bytes", 1))
            n_dims = int(r.unpack("I"))
            if n_dims > _MAX_DIMS:
                raise ModelLoadError(f"{path}: a tensor with {n_dims} dimensions")
            r.skip(8 * n_dims + 4 + 8)  # dims, type, offset
            tensor_spans.append((start, r.pos))
        alignment = values.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise ModelLoadError(f"{path}: general.alignment {alignment!r} is not a power of two")
        data_start = -(-r.pos // alignment) * alignment
        if data_start > size:
            raise ModelLoadError(f"{path}: no room for tensor data")
        return Header(version, size, values, tuple(kv_spans), tuple(tensor_spans), alignment, data_start)


def split_parts(path: str | Path) -> list[Path] | None:
    """All parts of the split GGUF whose first part is `path` (by llama.cpp's naming), or None
    when `path` is not named as the first part of a split."""
    path = Path(path)
    m = SPLIT_NAME.match(path.name)
    if m is None or int(m["no"]) != 1:
        return None
    count = int(m["count"])
    return [path.with_name(f"{m['prefix']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]


@dataclass(frozen=True)
class Joined:
    """A split model's parts as one GGUF: its bytes are `segments` in order, each header bytes the
    host made or a range of one part's file (its tensor data)."""

    parts: tuple[Path, ...]
    segments: tuple[bytes | tuple[int, int, int], ...]  # bytes, or (part index, offset, length)
    size: int = field(default=0)


def join_splits(parts: Sequence[Path]) -> Joined:
    """The layout of one GGUF holding every part's tensors: the first part's metadata less its
    split.* keys, every part's tensor infos with their offsets moved to where that part's data
    lands, then the parts' data sections one after another (each padded to the alignment)."""
    headers = [read_header(p) for p in parts]
    first = headers[0]
    count = first.values.get("split.count")
    if count != len(parts):
        raise ModelLoadError(f"{parts[0]} says it has split.count={count!r} parts, its name says {len(parts)}")
    for i, (p, h) in enumerate(zip(parts, headers, strict=True)):
        if h.values.get("split.no") != i or h.alignment != first.alignment or h.version != first.version:
            raise ModelLoadError(f"{p} is not part {i + 1} of {parts[0]} (split.no, version or alignment differ)")

    def pad(n: int) -> int:
        return -(-n // first.alignment) * first.alignment

    with open(parts[0], "rb") as f:
        f.seek(first.kv_spans[0][1] if first.kv_spans else 24)
        kv_bytes = f.read((first.kv_spans[-1][2] if first.kv_spans else 24) - f.tell())
    kept = [(s, e) for key, s, e in first.kv_spans if not key.startswith("split.")]
    base = first.kv_spans[0][1] if first.kv_spans else 24
    header = bytearray(struct.pack("<4sIQQ", MAGIC, first.version, sum(len(h.tensor_spans) for h in headers),
                                   len(kept)))
    for s, e in kept:
        header += kv_bytes[s - base: e - base]
    data_base = 0
    data: list[bytes | tuple[int, int, int]] = []
    for i, (p, h) in enumerate(zip(parts, headers, strict=True)):
        with open(p, "rb") as f:
            for s, e in h.tensor_spans:
                f.seek(s)
                info = f.read(e - s)
                offset = struct.unpack_from("<Q", info, len(info) - 8)[0]
                header += info[:-8] + struct.pack("<Q", data_base + offset)
        length = h.size - h.data_start
        data.append((i, h.data_start, length))
        if pad(length) > length:
            data.append(bytes(pad(length) - length))
        data_base += pad(length)
    header += bytes(pad(len(header)) - len(header))
    segments = (bytes(header), *data)
    size = sum(len(s) if isinstance(s, bytes) else s[2] for s in segments)
    return Joined(tuple(parts), segments, size)
