"""Conversions between F32, F16 and BF16 on raw little-endian bytes, in pure Python.

* F16 -> F32 and BF16 -> F32 are exact. F16 uses struct's 'e' format (C speed); BF16 widens
  each value by interleaving two zero bytes (bytearray slice assignment, C speed).
* F32 -> F16 rounds to nearest even (struct 'e'); a finite value beyond the F16 range is an
  error naming the tensor (it would become infinity).
* F32 -> BF16 rounds to nearest even: the whole chunk is treated as one big integer of 32-bit
  lanes, so `b + 0x7FFF + ((b >> 16) & 1)` and the shift run as a handful of big-integer
  operations instead of a Python loop. That addition cannot carry out of a lane unless the lane
  is a NaN; chunks holding NaN take a per-value path that keeps a quiet NaN of the same sign
  (as tools/morgguf.py does).
"""

import struct
import sys

from .common import ConvertError

if sys.byteorder != "little":  # pragma: no cover - no such CI machine
    raise ImportError("mor-convert needs a little-endian host")

CHUNK = 1 << 18          # values per chunk
_MASKS = {}


def _lane(value, n):
    return int.from_bytes(struct.pack("<I", value) * n, "little")


def _masks(n):
    m = _MASKS.get(n)
    if m is None:
        m = (_lane(1, n), _lane(0x7FFF, n), _lane(0x7FFFFFFF, n), _lane(0x007FFFFF, n),
             _lane(0xFFFF, n))
        if len(_MASKS) > 8:
            _MASKS.clear()
        _MASKS[n] = m
    return m


def f16_to_f32(b):
    n = len(b) // 2
    out = bytearray()
    for s in range(0, n, CHUNK):
        k = min(CHUNK, n - s)
        vals = struct.unpack_from("<%de" % k, b, 2 * s)
        out += struct.pack("<%df" % k, *vals)
    return bytes(out)


def bf16_to_f32(b):
    b = bytes(b)
    n = len(b) // 2
    out = bytearray(4 * n)
    out[2::4] = b[0::2]
    out[3::4] = b[1::2]
    return bytes(out)


def _bf16_slow(chunk):
    vals = struct.unpack("<%dI" % (len(chunk) // 4), chunk)
    res = []
    for x in vals:
        if (x & 0x7F800000) == 0x7F800000 and (x & 0x007FFFFF):
            res.append(((x >> 16) & 0x8000) | 0x7FC0)
        else:
            res.append(((x + 0x7FFF + ((x >> 16) & 1)) >> 16) & 0xFFFF)
    return struct.pack("<%dH" % len(res), *res)


def f32_to_bf16(b):
    b = bytes(b)
    n = len(b) // 4
    out = bytearray(2 * n)
    for s in range(0, n, CHUNK):
        k = min(CHUNK, n - s)
        chunk = b[4 * s:4 * (s + k)]
        one, k7fff, absmask, nanadd, ffff = _masks(k)
        x = int.from_bytes(chunk, "little")
        if (((x & absmask) + nanadd) >> 31) & one:
            out[2 * s:2 * (s + k)] = _bf16_slow(chunk)
            continue
        r = (((x + ((x >> 16) & one) + k7fff) >> 16) & ffff).to_bytes(4 * k, "little")
        out[2 * s:2 * (s + k):2] = r[0::4]
        out[2 * s + 1:2 * (s + k):2] = r[1::4]
    return bytes(out)


def f32_to_f16(b, what="tensor"):
    b = bytes(b)
    n = len(b) // 4
    out = bytearray()
    for s in range(0, n, CHUNK):
        k = min(CHUNK, n - s)
        vals = struct.unpack_from("<%df" % k, b, 4 * s)
        try:
            out += struct.pack("<%de" % k, *vals)
        except (OverflowError, struct.error):
            bad = next(v for v in vals if v == v and abs(v) != float("inf") and abs(v) >= 65520.0)
            raise ConvertError("%s: the value %g does not fit F16 (largest 65504); convert with "
                               "--type bf16 or --type f32" % (what, bad))
    return bytes(out)


def convert(b, src, dst, what="tensor"):
    """Raw bytes of dtype src (F32/F16/BF16) as dtype dst."""
    if src == dst:
        return bytes(b)
    if src == "F16":
        b = f16_to_f32(b)
    elif src == "BF16":
        b = bf16_to_f32(b)
    elif src != "F32":
        raise ConvertError("%s: cannot convert dtype %s" % (what, src))
    if dst == "F32":
        return b
    if dst == "F16":
        return f32_to_f16(b, what)
    if dst == "BF16":
        return f32_to_bf16(b)
    raise ConvertError("%s: cannot convert to dtype %s" % (what, dst))


def to_floats(b, src):
    """Raw bytes as a list of Python floats."""
    if src != "F32":
        b = convert(b, src, "F32")
    return list(struct.unpack("<%df" % (len(b) // 4), b))


def from_floats(vals, dst, what="tensor"):
    return convert(struct.pack("<%df" % len(vals), *vals), "F32", dst, what)
