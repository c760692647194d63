"""The `.kdic` container: one image compressed by one model.

Layout (big-endian):
    magic  b"KDIC" | version u8 | model fingerprint 16 bytes | height u32 | width u32 |
    padded height u32 | padded width u32 | payload length u32 | CRC-32 u32 |
    payload = shape (u16 length + JSON) + strings (nested: b"L" u32 count items |
    b"B" u32 length bytes)
The fingerprint ties a file to the exact weights and entropy tables that wrote it, so
decoding with another model is refused; the length and the CRC (over every byte of the
file but the CRC itself, header included, so a damaged size cannot decode to an image of
another size) catch truncation and corruption. Version 1 files (CRC over the payload only)
are refused: compress the image again.
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdic_cli.models import fingerprint

__all__ = ["MAGIC", "VERSION", "ContainerError", "compress_image", "decompress_bytes",
           "pack", "payload_bytes", "unpack"]  # fmt: skip

MAGIC = b"KDIC"
VERSION = 2
_HEAD = struct.Struct(">4sB16sIIIIII")
ALIGN = 64  # compressai's models downsample by up to 64 (with the hyperprior)


class ContainerError(ValueError):
    """Not a kdic file, truncated or corrupt, or written by another model."""


def _enc_strings(obj: Any, out: bytearray) -> None:
    if isinstance(obj, (bytes, bytearray)):
        out += b"B" + struct.pack(">I", len(obj)) + bytes(obj)
    elif isinstance(obj, (list, tuple)):
        out += b"L" + struct.pack(">I", len(obj))
        for item in obj:
            _enc_strings(item, out)
    else:
        raise TypeError(f"cannot store {type(obj).__name__} in a kdic container")


def _dec_strings(buf: bytes, pos: int) -> tuple[Any, int]:
    if pos + 5 > len(buf):
        raise ContainerError("truncated strings")
    tag, (n,) = buf[pos : pos + 1], struct.unpack(">I", buf[pos + 1 : pos + 5])
    pos += 5
    if tag == b"B":
        if pos + n > len(buf):
            raise ContainerError("truncated strings")
        return buf[pos : pos + n], pos + n
    if tag == b"L":
        items = []
        for _ in range(n):
            item, pos = _dec_strings(buf, pos)
            items.append(item)
        return items, pos
    raise ContainerError("corrupt strings")


def _plain_shape(shape: Any) -> Any:
    if isinstance(shape, dict):
        return {k: _plain_shape(v) for k, v in shape.items()}
    if isinstance(shape, (list, tuple, torch.Size)):
        return [_plain_shape(v) for v in shape]
    return int(shape)


def _torch_shape(shape: Any) -> Any:
    if isinstance(shape, dict):
        return {k: _torch_shape(v) for k, v in shape.items()}
    if isinstance(shape, list):
        if all(isinstance(v, int) for v in shape):
            return torch.Size(shape)
        return [_torch_shape(v) for v in shape]
    return shape


def pack(fp: bytes, size: tuple[int, int], padded: tuple[int, int], strings: Any,
         shape: Any) -> bytes:  # fmt: skip
    payload = bytearray()
    blob = json.dumps(_plain_shape(shape)).encode()
    payload += struct.pack(">H", len(blob)) + blob
    _enc_strings(strings, payload)
    fields = (MAGIC, VERSION, fp, size[0], size[1], padded[0], padded[1], len(payload))
    crc = zlib.crc32(bytes(payload), zlib.crc32(_HEAD.pack(*fields, 0)[:-4]))
    return _HEAD.pack(*fields, crc) + bytes(payload)


def unpack(data: bytes) -> dict[str, Any]:
    if len(data) < _HEAD.size or data[:4] != MAGIC:
        raise ContainerError("not a kdic file (bad magic)" if len(data) >= 4 else "truncated")
    magic, version, fp, h, w, ph, pw, n, crc = _HEAD.unpack(data[: _HEAD.size])
    if version != VERSION:
        raise ContainerError(f"container version {version}, this kdic reads {VERSION}")
    payload = data[_HEAD.size :]
    if len(payload) < n:
        raise ContainerError(f"truncated: {len(payload)} of {n} payload bytes")
    if len(payload) > n:
        raise ContainerError(f"{len(payload) - n} unexpected bytes after the payload")
    if zlib.crc32(payload, zlib.crc32(data[: _HEAD.size - 4])) != crc:
        raise ContainerError("corrupt file (CRC mismatch)")
    (m,) = struct.unpack(">H", payload[:2])
    shape = json.loads(payload[2 : 2 + m].decode())
    strings, end = _dec_strings(payload, 2 + m)
    if end != n:
        raise ContainerError("corrupt payload (trailing bytes)")
    return {"fingerprint": fp, "size": (h, w), "padded": (ph, pw), "strings": strings,
            "shape": _torch_shape(shape)}  # fmt: skip


def _string_bytes(strings: Any) -> int:
    if isinstance(strings, (bytes, bytearray)):
        return len(strings)
    return sum(_string_bytes(s) for s in strings)


def payload_bytes(data: bytes) -> int:
    """Bytes of compressai's own strings in a .kdic file: what compressai's eval_model and
    the papers count as the rate (the file adds its header, the shape and length prefixes)."""
    return _string_bytes(unpack(data)["strings"])


def pad_image(x: Tensor, align: int = ALIGN) -> tuple[Tensor, tuple[int, int]]:
    """Replicate-pad a (N,3,H,W) batch at the bottom/right to a multiple of `align`."""
    h, w = x.shape[-2:]
    ph, pw = -h % align, -w % align
    return F.pad(x, (0, pw, 0, ph), mode="replicate"), (h + ph, w + pw)


@torch.no_grad()
def compress_image(model: nn.Module, x: Tensor, fp: bytes | None = None) -> bytes:
    """Real bitstream of one image (3,H,W) in [0,1]; `model` must be updated (update())."""
    h, w = x.shape[-2:]
    xp, padded = pad_image(x.unsqueeze(0) if x.dim() == 3 else x)
    out = model.compress(xp)
    return pack(fp or fingerprint(model), (h, w), padded, out["strings"], out["shape"])


@torch.no_grad()
def decompress_bytes(model: nn.Module, data: bytes, fp: bytes | None = None) -> Tensor:
    """The (3,H,W) reconstruction in [0,1]; refuses files written by another model."""
    box = unpack(data)
    if box["fingerprint"] != (fp or fingerprint(model)):
        raise ContainerError("written by another model (fingerprint mismatch)")
    out = model.decompress(box["strings"], box["shape"])
    h, w = box["size"]
    return out["x_hat"][0, :, :h, :w].clamp(0, 1)
