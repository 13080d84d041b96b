"""A Context's saved state: what each sequence's KV cache holds, with the tokens the prefix
cache knows it holds, as one self-checking blob.

Layout: MAGIC, a 4-byte little-endian header length, the JSON header (format, the model's
fingerprint, and per sequence its id, tokens and state size), the llama.cpp state of each
sequence in turn, then the sha256 of everything before it. A damaged blob or one from another
model is refused before llama.cpp sees any of it.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from typing import Any

from .errors import InvalidArgumentError

MAGIC = b"WASILLAMA-STATE\0"
FORMAT = 1


@dataclass(frozen=True)
class SequenceState:
    seq: int
    tokens: list[int]
    data: bytes


def pack(fingerprint: dict[str, Any], sequences: list[SequenceState]) -> bytes:
    header = json.dumps({"format": FORMAT, "model": fingerprint,
                         "sequences": [{"seq": s.seq, "tokens": s.tokens, "size": len(s.data)} for s in sequences]},
                        separators=(",", ":")).encode()
    body = MAGIC + struct.pack("<I", len(header)) + header + b"".join(s.data for s in sequences)
    return body + hashlib.sha256(body).digest()


def unpack(blob: bytes, fingerprint: dict[str, Any], n_seq_max: int) -> list[SequenceState]:
    view = memoryview(blob)
    if len(view) < len(MAGIC) + 4 + 32 or bytes(view[: len(MAGIC)]) != MAGIC:
        raise InvalidArgumentError("not a wasillama context state")
    body, digest = view[:-32], bytes(view[-32:])
    if hashlib.sha256(body).digest() != digest:
        raise InvalidArgumentError("the context state is damaged (its checksum does not match)")
    (n,) = struct.unpack_from("<I", body, len(MAGIC))
    start = len(MAGIC) + 4
    try:
        header = json.loads(bytes(body[start : start + n]))
    except ValueError as e:
        raise InvalidArgumentError(f"the context state's header is damaged: {e}") from None
    if header.get("format") != FORMAT:
        raise InvalidArgumentError(f"context state format {header.get('format')!r}; this wasillama reads {FORMAT}")
    if header.get("model") != fingerprint:
        raise InvalidArgumentError(f"the context state is of another model ({header.get('model')}), "
                                   f"not of this one ({fingerprint})")
    out, offset = [], start + n
    for s in header["sequences"]:
        seq, size = int(s["seq"]), int(s["size"])
        if not 0 <= seq < n_seq_max:
            raise InvalidArgumentError(f"the state holds sequence {seq}; this context has {n_seq_max}")
        out.append(SequenceState(seq, [int(t) for t in s["tokens"]], bytes(body[offset : offset + size])))
        offset += size
    if offset != len(body):
        raise InvalidArgumentError("the context state's sizes do not add up")
    return out
