"""Byte-level GGUF files, well-formed or not: parse a real file into its parts, change any of
them (counts, lengths, types, offsets) without the checks a GGUF writer would apply, write it
back. The hostile-file suite builds its cases with this (the `gguf` package refuses to write
most of them)."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, replace

# GGUF value types
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
SCALAR_FORMAT = {UINT8: "B", INT8: "b", UINT16: "H", INT16: "h", UINT32: "I", INT32: "i", FLOAT32: "f",
                 BOOL: "?", UINT64: "Q", INT64: "q", FLOAT64: "d"}
# ggml types and (block size, bytes per block) for the ones the base models use
F32, F16, Q8_0 = 0, 1, 8
TYPE_SIZE = {F32: (1, 4), F16: (1, 2), Q8_0: (32, 34)}
DEFAULT_ALIGNMENT = 32


def u32(v: int) -> bytes:
    return struct.pack("<I", v & 0xFFFFFFFF)


def u64(v: int) -> bytes:
    return struct.pack("<Q", v & 0xFFFFFFFFFFFFFFFF)


def string(s: bytes | str, length: int | None = None) -> bytes:
    """A GGUF string: u64 length, bytes (`length` may lie)."""
    raw = s.encode() if isinstance(s, str) else s
    return u64(len(raw) if length is None else length) + raw


def scalar(vtype: int, value: float | int | bool) -> bytes:
    return struct.pack("<" + SCALAR_FORMAT[vtype], value)


def array(subtype: int, items: Iterable[bytes], count: int | None = None) -> bytes:
    """An array value's payload: element type, u64 count (`count` may lie), the items."""
    parts = list(items)
    return u32(subtype) + u64(len(parts) if count is None else count) + b"".join(parts)


@dataclass
class KV:
    key: bytes
    vtype: int
    payload: bytes  # the encoded value, after the type

    def encode(self) -> bytes:
        return string(self.key) + u32(self.vtype) + self.payload


def kv(key: str, vtype: int, value: float | int | bool | bytes | str) -> KV:
    if vtype == STRING:
        assert isinstance(value, (bytes, str))
        return KV(key.encode(), STRING, string(value))
    assert not isinstance(value, (bytes, str))
    return KV(key.encode(), vtype, scalar(vtype, value))


@dataclass
class Tensor:
    name: bytes
    dims: list[int]
    ggml_type: int
    offset: int
    n_dims: int | None = None  # a lie about len(dims)

    def encode(self) -> bytes:
        n = len(self.dims) if self.n_dims is None else self.n_dims
        return string(self.name) + u32(n) + b"".join(u64(d) for d in self.dims) + u32(self.ggml_type) + u64(self.offset)

    @property
    def nbytes(self) -> int:
        block, size = TYPE_SIZE[self.ggml_type]
        n = 1
        for d in self.dims:
            n *= d
        return n // block * size


@dataclass
class Gguf:
    version: int
    kvs: list[KV]
    tensors: list[Tensor]
    data: bytes
    alignment: int = DEFAULT_ALIGNMENT
    n_kv: int | None = None        # lies about the counts
    n_tensors: int | None = None
    magic: bytes = b"GGUF"
    tail: bytes = b""              # written after the data
    extra_kv: bytes = b""          # raw bytes after the last KV (a malformed one), counted in n_kv

    def copy(self, n_kv: int | None = None, n_tensors: int | None = None) -> Gguf:
        """A deep copy (KVs and tensor infos too), with the counts' lies if given."""
        return replace(self, kvs=[replace(item) for item in self.kvs],
                       tensors=[replace(t, dims=list(t.dims)) for t in self.tensors], n_kv=n_kv, n_tensors=n_tensors)

    # ---- key-values ----
    def index(self, key: str) -> int:
        for i, item in enumerate(self.kvs):
            if item.key == key.encode():
                return i
        raise KeyError(key)

    def get(self, key: str) -> KV:
        return self.kvs[self.index(key)]

    def set(self, item: KV) -> Gguf:
        """Replace the KV of that key (or append it)."""
        try:
            self.kvs[self.index(item.key.decode())] = item
        except KeyError:
            self.kvs.append(item)
        return self

    def drop(self, key: str) -> Gguf:
        del self.kvs[self.index(key)]
        return self

    def tensor(self, name: str) -> Tensor:
        for t in self.tensors:
            if t.name == name.encode():
                return t
        raise KeyError(name)

    def encode(self) -> bytes:
        out = bytearray(self.magic + u32(self.version))
        out += u64(len(self.tensors) if self.n_tensors is None else self.n_tensors)
        out += u64(len(self.kvs) if self.n_kv is None else self.n_kv)
        for item in self.kvs:
            out += item.encode()
        out += self.extra_kv
        for t in self.tensors:
            out += t.encode()
        out += bytes(-len(out) % self.alignment)
        return bytes(out) + self.data + self.tail


class _Reader:
    def __init__(self, raw: bytes) -> None:
        self.raw, self.pos = raw, 0

    def take(self, fmt: str) -> int:
        (v,) = struct.unpack_from("<" + fmt, self.raw, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return int(v)

    def bytes_(self) -> bytes:
        n = self.take("Q")
        s = self.raw[self.pos: self.pos + n]
        self.pos += n
        return s

    def skip(self, vtype: int) -> None:
        if vtype == STRING:
            self.bytes_()
        elif vtype == ARRAY:
            sub, n = self.take("I"), self.take("Q")
            for _ in range(n):
                self.skip(sub)
        else:
            self.pos += struct.calcsize("<" + SCALAR_FORMAT[vtype])


def parse(raw: bytes) -> Gguf:
    """A GGUF v3 (little-endian) file as its parts."""
    r = _Reader(raw)
    magic = raw[:4]
    r.pos = 4
    version, n_tensors, n_kv = r.take("I"), r.take("Q"), r.take("Q")
    kvs, alignment = [], DEFAULT_ALIGNMENT
    for _ in range(n_kv):
        key, vtype = r.bytes_(), r.take("I")
        start = r.pos
        r.skip(vtype)
        kvs.append(KV(key, vtype, raw[start: r.pos]))
        if key == b"general.alignment":
            alignment = struct.unpack_from("<I", raw, start)[0]
    tensors = []
    for _ in range(n_tensors):
        name, n_dims = r.bytes_(), r.take("I")
        dims = [r.take("Q") for _ in range(n_dims)]
        tensors.append(Tensor(name, dims, r.take("I"), r.take("Q")))
    data_start = -(-r.pos // alignment) * alignment
    return Gguf(version, kvs, tensors, raw[data_start:], alignment, magic=magic)


def string_array(values: Iterable[bytes | str]) -> bytes:
    return array(STRING, (string(v) for v in values))


def array_items(item: KV) -> tuple[int, int, bytes]:
    """(element type, count, items bytes) of an array KV."""
    sub, n = struct.unpack_from("<IQ", item.payload)
    return sub, n, item.payload[12:]


def strings_of(item: KV) -> list[bytes]:
    sub, n, body = array_items(item)
    assert sub == STRING
    r, out = _Reader(body), []
    for _ in range(n):
        out.append(r.bytes_())
    return out
