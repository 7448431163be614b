#!/usr/bin/env python3
"""morgguf: a GGUF (version 2 and 3) reader and writer in pure standard-library Python.

Only `struct`, `array` and `sys` are used, so the module runs anywhere Python 3.8+ runs,
including CI machines without numpy. See docs/FORMAT.md §1 for the container layout.

Writing::

    w = GGUFWriter()                       # alignment 32, version 3
    w.add_string("general.architecture", "mor")
    w.add_uint32("mor.block_count", 8)
    w.add_array("mor.exit.layers", UINT32, [2, 4])
    w.add_tensor("token_embd.weight", floats, shape=(V, d))          # outermost first
    w.add_tensor("blk.0.attn_q.weight", raw_bytes, dims=[d, d], ttype=F16)  # innermost first
    w.write("model.gguf")

Tensor data is either raw bytes already encoded in the tensor type, or a sequence of numbers
(list, tuple, array('f'), array('d'), ...) that is encoded here: F32 exactly, F16 with
round-to-nearest-even (struct 'e'), BF16 by rounding the float32 value to nearest-even.

Reading::

    r = GGUFReader("model.gguf")
    r.version, r.alignment, r.data_offset
    r.get("mor.block_count")               # python value (arrays become lists)
    r.fields["mor.exit.layers"]            # Field(key, vtype, value, offset); arrays: GGUFArray
    t = r.tensor("token_embd.weight")      # TensorInfo(name, dims, ttype, offset, n_elements, nbytes)
    r.tensor_bytes(t.name)                 # raw bytes
    r.tensor_floats(t.name)                # array('f') decoded from F32/F16/BF16 (and F64 as 'd')
"""

import struct
import sys
from array import array

__all__ = [
    "GGUFError", "GGUFArray", "Field", "TensorInfo", "GGUFWriter", "GGUFReader",
    "UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "FLOAT32", "BOOL", "STRING",
    "ARRAY", "UINT64", "INT64", "FLOAT64", "F32", "F16", "BF16", "F64",
    "VALUE_TYPE_NAMES", "TENSOR_TYPES", "tensor_type_name", "tensor_nbytes",
    "encode_floats", "decode_floats", "f32_to_bf16_bits", "round_f16", "round_bf16",
]

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# Metadata value types.
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
VALUE_TYPE_NAMES = ["UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "FLOAT32", "BOOL",
                    "STRING", "ARRAY", "UINT64", "INT64", "FLOAT64"]
_SCALAR_FMT = {UINT8: "B", INT8: "b", UINT16: "H", INT16: "h", UINT32: "I", INT32: "i",
               FLOAT32: "f", BOOL: "B", UINT64: "Q", INT64: "q", FLOAT64: "d"}
_INT_RANGE = {UINT8: (0, 2**8 - 1), INT8: (-2**7, 2**7 - 1), UINT16: (0, 2**16 - 1),
              INT16: (-2**15, 2**15 - 1), UINT32: (0, 2**32 - 1), INT32: (-2**31, 2**31 - 1),
              UINT64: (0, 2**64 - 1), INT64: (-2**63, 2**63 - 1)}

# Tensor types: id -> (name, block size in elements, bytes per block). Every id ggml has
# assigned is listed so that the reader can size any tensor; only F32, F16, BF16 and F64 are
# decoded to floats here.
TENSOR_TYPES = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
    26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17),
}
F32, F16, BF16, F64 = 0, 1, 30, 28

_LITTLE = sys.byteorder == "little"


class GGUFError(ValueError):
    """A malformed or unsupported GGUF file, or a bad argument to the writer."""


class GGUFArray(object):
    """A typed GGUF array value: elem_type (a value type id) and items (a list). Items of an
    array of arrays are GGUFArray objects themselves."""

    __slots__ = ("elem_type", "items")

    def __init__(self, elem_type, items):
        self.elem_type = int(elem_type)
        self.items = list(items)

    def to_python(self):
        if self.elem_type == ARRAY:
            return [a.to_python() for a in self.items]
        return list(self.items)

    def __eq__(self, other):
        return (isinstance(other, GGUFArray) and self.elem_type == other.elem_type
                and self.items == other.items)

    def __len__(self):
        return len(self.items)

    def __repr__(self):
        return "GGUFArray(%s, %r)" % (VALUE_TYPE_NAMES[self.elem_type], self.items)


class Field(object):
    """One metadata key/value pair as read: key, vtype, value (python scalar, str, or
    GGUFArray for arrays) and offset (byte offset of the value in the file)."""

    __slots__ = ("key", "vtype", "value", "offset")

    def __init__(self, key, vtype, value, offset=0):
        self.key, self.vtype, self.value, self.offset = key, vtype, value, offset

    def __repr__(self):
        return "Field(%r, %s, %r)" % (self.key, VALUE_TYPE_NAMES[self.vtype], self.value)


class TensorInfo(object):
    """A tensor as described in the header: dims innermost first (ggml order); offset is
    relative to the start of the data section; abs_offset is the absolute file offset."""

    __slots__ = ("name", "dims", "ttype", "offset", "abs_offset", "n_elements", "nbytes")

    def __init__(self, name, dims, ttype, offset, abs_offset, n_elements, nbytes):
        self.name, self.dims, self.ttype = name, list(dims), ttype
        self.offset, self.abs_offset = offset, abs_offset
        self.n_elements, self.nbytes = n_elements, nbytes

    @property
    def shape(self):
        """Dimensions outermost first (the row-major / torch / numpy order)."""
        return tuple(reversed(self.dims))

    @property
    def type_name(self):
        return tensor_type_name(self.ttype)

    def __repr__(self):
        return "TensorInfo(%r, dims=%r, %s, offset=%d)" % (self.name, self.dims, self.type_name,
                                                            self.offset)


def tensor_type_name(ttype):
    t = TENSOR_TYPES.get(ttype)
    return t[0] if t else "type%d" % ttype


def tensor_nbytes(ttype, n_elements):
    """Bytes used by n_elements of tensor type ttype (n_elements a multiple of the block)."""
    if ttype not in TENSOR_TYPES:
        raise GGUFError("unknown tensor type id %d" % ttype)
    _, blk, bsz = TENSOR_TYPES[ttype]
    if n_elements % blk:
        raise GGUFError("%d elements is not a multiple of the %s block size %d"
                        % (n_elements, tensor_type_name(ttype), blk))
    return n_elements // blk * bsz


# ---------------------------------------------------------------------------------------------
# Float encoding helpers
# ---------------------------------------------------------------------------------------------

def _f32_array(values):
    """Values as array('f') (rounding float64 to float32 to nearest-even)."""
    if isinstance(values, array) and values.typecode == "f":
        return values
    return array("f", values)


def f32_to_bf16_bits(a32):
    """array('f') -> array('H') of bfloat16 bit patterns, round-to-nearest-even; NaN stays
    a quiet NaN of the same sign."""
    bits = array("I", a32.tobytes())
    if not _LITTLE:
        bits.byteswap()
    out = array("H", bytes(2 * len(bits)))
    for i, b in enumerate(bits):
        if (b & 0x7F800000) == 0x7F800000 and (b & 0x007FFFFF):
            out[i] = ((b >> 16) & 0x8000) | 0x7FC0
        else:
            out[i] = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) & 0xFFFF
    return out


def encode_floats(values, ttype):
    """Encode a sequence of numbers as little-endian bytes of tensor type F32, F16, BF16 or
    F64."""
    if ttype == F32:
        a = _f32_array(values)
        if not _LITTLE:
            a = array("f", a)
            a.byteswap()
        return a.tobytes()
    if ttype == F16:
        vals = list(values)
        try:
            return struct.pack("<%de" % len(vals), *vals)
        except (OverflowError, struct.error) as e:
            raise GGUFError("value not representable in F16: %s" % e)
    if ttype == BF16:
        h = f32_to_bf16_bits(_f32_array(values))
        if not _LITTLE:
            h.byteswap()
        return h.tobytes()
    if ttype == F64:
        a = array("d", values)
        if not _LITTLE:
            a.byteswap()
        return a.tobytes()
    raise GGUFError("cannot encode floats as tensor type %s" % tensor_type_name(ttype))


def decode_floats(data, ttype):
    """Decode little-endian tensor bytes of type F32, F16 or BF16 to array('f'), F64 to
    array('d')."""
    data = bytes(data)
    if ttype == F32:
        a = array("f", data)
        if not _LITTLE:
            a.byteswap()
        return a
    if ttype == F16:
        n = len(data) // 2
        return array("f", struct.unpack("<%de" % n, data))
    if ttype == BF16:
        h = array("H", data)
        if not _LITTLE:
            h.byteswap()
        bits = array("I", (x << 16 for x in h))
        if not _LITTLE:
            bits.byteswap()
        return array("f", bits.tobytes())
    if ttype == F64:
        a = array("d", data)
        if not _LITTLE:
            a.byteswap()
        return a
    raise GGUFError("cannot decode tensor type %s to floats" % tensor_type_name(ttype))


def round_f16(values):
    """The values as stored in an F16 tensor, read back as floats."""
    return decode_floats(encode_floats(values, F16), F16)


def round_bf16(values):
    """The values as stored in a BF16 tensor, read back as floats."""
    return decode_floats(encode_floats(values, BF16), BF16)


# ---------------------------------------------------------------------------------------------
# Writer
# ---------------------------------------------------------------------------------------------

def _pack_string(s):
    b = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    return struct.pack("<Q", len(b)) + b


def _pack_scalar(vtype, v, what):
    if vtype == STRING:
        return _pack_string(v)
    if vtype == BOOL:
        if v not in (True, False, 0, 1):
            raise GGUFError("%s: BOOL value must be true/false, got %r" % (what, v))
        return struct.pack("<B", 1 if v else 0)
    if vtype in _INT_RANGE:
        lo, hi = _INT_RANGE[vtype]
        if isinstance(v, bool) or int(v) != v or not lo <= int(v) <= hi:
            raise GGUFError("%s: %r does not fit %s" % (what, v, VALUE_TYPE_NAMES[vtype]))
        return struct.pack("<" + _SCALAR_FMT[vtype], int(v))
    if vtype in (FLOAT32, FLOAT64):
        return struct.pack("<" + _SCALAR_FMT[vtype], float(v))
    raise GGUFError("%s: unknown value type %r" % (what, vtype))


def _pack_value(vtype, value, what):
    if vtype != ARRAY:
        return _pack_scalar(vtype, value, what)
    if not isinstance(value, GGUFArray):
        raise GGUFError("%s: ARRAY value must be a GGUFArray" % what)
    et = value.elem_type
    if not 0 <= et < 13:
        raise GGUFError("%s: unknown array element type %r" % (what, et))
    parts = [struct.pack("<IQ", et, len(value.items))]
    if et in _INT_RANGE or et in (FLOAT32, FLOAT64):
        # fast path for numeric arrays (range-checked for integers)
        if et in _INT_RANGE:
            lo, hi = _INT_RANGE[et]
            for x in value.items:
                if isinstance(x, bool) or int(x) != x or not lo <= int(x) <= hi:
                    raise GGUFError("%s: array element %r does not fit %s"
                                    % (what, x, VALUE_TYPE_NAMES[et]))
            items = [int(x) for x in value.items]
        else:
            items = [float(x) for x in value.items]
        parts.append(struct.pack("<%d%s" % (len(items), _SCALAR_FMT[et]), *items))
    else:
        for i, x in enumerate(value.items):
            parts.append(_pack_value(et, x, "%s[%d]" % (what, i)))
    return b"".join(parts)


def _infer_vtype(value):
    if isinstance(value, GGUFArray):
        return ARRAY
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, int):
        return UINT32 if 0 <= value < 2**32 else INT64
    if isinstance(value, float):
        return FLOAT32
    if isinstance(value, (str, bytes)):
        return STRING
    raise GGUFError("cannot infer a GGUF type for %r; pass vtype" % (value,))


class GGUFWriter(object):
    """Collects metadata and tensors, then writes a GGUF file (write) or returns its bytes
    (to_bytes). Keys and tensors keep their insertion order."""

    def __init__(self, alignment=DEFAULT_ALIGNMENT, version=3):
        if alignment < 1 or alignment & (alignment - 1):
            raise GGUFError("alignment must be a power of two, got %r" % alignment)
        if version not in (2, 3):
            raise GGUFError("only GGUF versions 2 and 3 can be written")
        self.alignment = alignment
        self.version = version
        self.kv = []            # (key, vtype, value)
        self._keys = set()
        self.tensors = []       # (name, dims, ttype, data bytes)
        self._names = set()
        if alignment != DEFAULT_ALIGNMENT:
            self.add_uint32("general.alignment", alignment)

    # -- metadata --------------------------------------------------------------------------
    def add_kv(self, key, value, vtype=None):
        """Add one key. vtype is a value type id; when None it is inferred (bool -> BOOL,
        int -> UINT32 or INT64, float -> FLOAT32, str -> STRING, GGUFArray -> ARRAY)."""
        if not isinstance(key, str) or not key:
            raise GGUFError("key must be a non-empty string")
        if key in self._keys:
            raise GGUFError("duplicate key %r" % key)
        if vtype is None:
            vtype = _infer_vtype(value)
        if key == "general.alignment":
            if vtype != UINT32:
                raise GGUFError("general.alignment must be UINT32")
            if value < 1 or value & (value - 1):
                raise GGUFError("general.alignment must be a power of two")
            self.alignment = int(value)
        _pack_value(vtype, value, key)      # validate now, so errors point at the caller
        self._keys.add(key)
        self.kv.append((key, vtype, value))

    def add_uint8(self, key, v): self.add_kv(key, v, UINT8)
    def add_int8(self, key, v): self.add_kv(key, v, INT8)
    def add_uint16(self, key, v): self.add_kv(key, v, UINT16)
    def add_int16(self, key, v): self.add_kv(key, v, INT16)
    def add_uint32(self, key, v): self.add_kv(key, v, UINT32)
    def add_int32(self, key, v): self.add_kv(key, v, INT32)
    def add_uint64(self, key, v): self.add_kv(key, v, UINT64)
    def add_int64(self, key, v): self.add_kv(key, v, INT64)
    def add_float32(self, key, v): self.add_kv(key, v, FLOAT32)
    def add_float64(self, key, v): self.add_kv(key, v, FLOAT64)
    def add_bool(self, key, v): self.add_kv(key, bool(v), BOOL)
    def add_string(self, key, v): self.add_kv(key, v, STRING)

    def add_array(self, key, elem_type, items):
        """An array of elem_type. For arrays of arrays pass elem_type=ARRAY and GGUFArray
        items."""
        self.add_kv(key, GGUFArray(elem_type, items), ARRAY)

    # -- tensors ---------------------------------------------------------------------------
    def add_tensor(self, name, data, dims=None, shape=None, ttype=F32):
        """Add a tensor. Give dims (innermost first, as stored) or shape (outermost first,
        row-major). data: bytes-like already in ttype's encoding, or a sequence of numbers
        (encoded here; only for F32, F16, BF16, F64)."""
        if not isinstance(name, str) or not name:
            raise GGUFError("tensor name must be a non-empty string")
        if len(name.encode("utf-8")) > 64:
            raise GGUFError("tensor name %r is longer than 64 bytes" % name)
        if name in self._names:
            raise GGUFError("duplicate tensor %r" % name)
        if (dims is None) == (shape is None):
            raise GGUFError("%s: give exactly one of dims and shape" % name)
        dims = [int(x) for x in (dims if dims is not None else reversed(list(shape)))]
        if not 1 <= len(dims) <= 4 or any(x < 1 for x in dims):
            raise GGUFError("%s: bad dims %r" % (name, dims))
        if ttype not in TENSOR_TYPES:
            raise GGUFError("%s: unknown tensor type %r" % (name, ttype))
        n = 1
        for x in dims:
            n *= x
        size = tensor_nbytes(ttype, n)
        if isinstance(data, (bytes, bytearray, memoryview)):
            raw = bytes(data)
        else:
            raw = encode_floats(data, ttype)
        if len(raw) != size:
            raise GGUFError("%s: %d bytes of data for dims %r of %s (expected %d)"
                            % (name, len(raw), dims, tensor_type_name(ttype), size))
        self._names.add(name)
        self.tensors.append((name, dims, ttype, raw))

    # -- output ----------------------------------------------------------------------------
    def _pad(self, n):
        return (-n) % self.alignment

    def to_bytes(self):
        out = [GGUF_MAGIC, struct.pack("<IQQ", self.version, len(self.tensors), len(self.kv))]
        for key, vtype, value in self.kv:
            out.append(_pack_string(key))
            out.append(struct.pack("<I", vtype))
            out.append(_pack_value(vtype, value, key))
        offset = 0
        for name, dims, ttype, raw in self.tensors:
            out.append(_pack_string(name))
            out.append(struct.pack("<I%dQ" % len(dims), len(dims), *dims))
            out.append(struct.pack("<IQ", ttype, offset))
            offset += len(raw) + self._pad(len(raw))
        header = b"".join(out)
        parts = [header, bytes(self._pad(len(header)))]
        for _, _, _, raw in self.tensors:
            parts.append(raw)
            parts.append(bytes(self._pad(len(raw))))
        return b"".join(parts)

    def write(self, path):
        data = self.to_bytes()
        with open(path, "wb") as f:
            f.write(data)
        return len(data)


# ---------------------------------------------------------------------------------------------
# Reader
# ---------------------------------------------------------------------------------------------

MAX_STRING = 16 << 20
MAX_KEY = 65535
MAX_ARRAY = 64 << 20
MAX_COUNT = 65536
MAX_ARRAY_DEPTH = 2


class GGUFReader(object):
    """Parses a whole GGUF file (path or bytes) and checks it the way docs/FORMAT.md §1 says
    the engine does. Attributes: version, alignment, fields (dict key -> Field, in file
    order), tensors (list of TensorInfo, in file order), data_offset, data (the file bytes).
    Tensor types are not restricted here; decode_floats refuses what it cannot decode."""

    def __init__(self, src):
        if isinstance(src, (bytes, bytearray, memoryview)):
            self.data = bytes(src)
            self.path = None
        else:
            with open(src, "rb") as f:
                self.data = f.read()
            self.path = src
        self._pos = 0
        self._parse()

    # -- low level -------------------------------------------------------------------------
    def _need(self, n, what):
        if n < 0 or self._pos + n > len(self.data):
            raise GGUFError("%s at offset %d: need %d bytes, %d left"
                            % (what, self._pos, n, len(self.data) - self._pos))

    def _unpack(self, fmt, what):
        size = struct.calcsize("<" + fmt)
        self._need(size, what)
        v = struct.unpack_from("<" + fmt, self.data, self._pos)
        self._pos += size
        return v[0] if len(v) == 1 else v

    def _string(self, what, limit=MAX_STRING):
        at = self._pos
        n = self._unpack("Q", what + " length")
        if n > limit:
            raise GGUFError("%s at offset %d: length %d exceeds the limit %d" % (what, at, n, limit))
        self._need(n, what)
        b = self.data[self._pos:self._pos + n]
        self._pos += n
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            raise GGUFError("%s at offset %d: not valid UTF-8" % (what, at))

    def _value(self, vtype, what, depth=0):
        if vtype == STRING:
            return self._string(what)
        if vtype == BOOL:
            at = self._pos
            b = self._unpack("B", what)
            if b > 1:
                raise GGUFError("%s at offset %d: BOOL must be 0 or 1, found %d" % (what, at, b))
            return bool(b)
        if vtype in _SCALAR_FMT:
            return self._unpack(_SCALAR_FMT[vtype], what)
        if vtype == ARRAY:
            at = self._pos
            et = self._unpack("I", what + " element type")
            n = self._unpack("Q", what + " element count")
            if et > 12:
                raise GGUFError("%s at offset %d: unknown array element type %d" % (what, at, et))
            if n > MAX_ARRAY:
                raise GGUFError("%s at offset %d: %d elements exceed the limit %d"
                                % (what, at, n, MAX_ARRAY))
            if et == ARRAY and depth + 1 >= MAX_ARRAY_DEPTH:
                raise GGUFError("%s at offset %d: arrays nested deeper than %d"
                                % (what, at, MAX_ARRAY_DEPTH))
            min_size = {STRING: 8, ARRAY: 12}.get(et) or struct.calcsize("<" + _SCALAR_FMT[et])
            if n * min_size > len(self.data) - self._pos:
                raise GGUFError("%s at offset %d: %d elements cannot fit in the %d bytes left"
                                % (what, at, n, len(self.data) - self._pos))
            if et in _SCALAR_FMT and et != BOOL:
                fmt = "<%d%s" % (n, _SCALAR_FMT[et])
                items = list(struct.unpack_from(fmt, self.data, self._pos))
                self._pos += struct.calcsize(fmt)
            else:
                items = [self._value(et, "%s[%d]" % (what, i), depth + 1) for i in range(n)]
            return GGUFArray(et, items)
        raise GGUFError("%s at offset %d: unknown value type %d" % (what, self._pos - 4, vtype))

    # -- parse -----------------------------------------------------------------------------
    def _parse(self):
        if len(self.data) < 4 or self.data[:4] != GGUF_MAGIC:
            raise GGUFError("bad magic at offset 0: expected 'GGUF', found %r" % self.data[:4])
        self._pos = 4
        self.version = self._unpack("I", "version")
        if self.version not in (2, 3):
            raise GGUFError("unsupported GGUF version %d at offset 4 (expected 2 or 3)" % self.version)
        n_tensors = self._unpack("Q", "tensor_count")
        n_kv = self._unpack("Q", "kv_count")
        if n_tensors > MAX_COUNT:
            raise GGUFError("tensor_count %d exceeds %d" % (n_tensors, MAX_COUNT))
        if n_kv > MAX_COUNT:
            raise GGUFError("kv_count %d exceeds %d" % (n_kv, MAX_COUNT))
        self.fields = {}
        for i in range(n_kv):
            key = self._string("key of kv pair %d" % i, MAX_KEY)
            if not key:
                raise GGUFError("kv pair %d at offset %d: empty key" % (i, self._pos - 8))
            if key in self.fields:
                raise GGUFError("duplicate key %r at offset %d" % (key, self._pos))
            at = self._pos
            vtype = self._unpack("I", "value type of %r" % key)
            if vtype > 12:
                raise GGUFError("key %r at offset %d: unknown value type %d" % (key, at, vtype))
            voff = self._pos
            self.fields[key] = Field(key, vtype, self._value(vtype, "value of %r" % key), voff)
        self.alignment = DEFAULT_ALIGNMENT
        if "general.alignment" in self.fields:
            f = self.fields["general.alignment"]
            a = f.value
            if f.vtype != UINT32 or not 1 <= a <= (1 << 20) or a & (a - 1):
                raise GGUFError("general.alignment at offset %d: expected a UINT32 power of two "
                                "in [1, 1 MiB], found %r" % (f.offset, a))
            self.alignment = a
        infos = []
        names = set()
        for i in range(n_tensors):
            name = self._string("name of tensor %d" % i, 64)
            if not name:
                raise GGUFError("tensor %d: empty name" % i)
            if name in names:
                raise GGUFError("duplicate tensor name %r" % name)
            names.add(name)
            at = self._pos
            nd = self._unpack("I", "n_dims of %r" % name)
            if not 1 <= nd <= 4:
                raise GGUFError("tensor %r at offset %d: n_dims %d not in [1, 4]" % (name, at, nd))
            dims = [self._unpack("Q", "dims of %r" % name) for _ in range(nd)]
            if any(d < 1 for d in dims):
                raise GGUFError("tensor %r: dimension of 0 in %r" % (name, dims))
            at = self._pos
            ttype = self._unpack("I", "type of %r" % name)
            if ttype not in TENSOR_TYPES:
                raise GGUFError("tensor %r at offset %d: unknown type id %d" % (name, at, ttype))
            off = self._unpack("Q", "offset of %r" % name)
            if off % self.alignment:
                raise GGUFError("tensor %r: offset %d is not a multiple of the alignment %d"
                                % (name, off, self.alignment))
            n = 1
            for d in dims:
                n *= d
            infos.append((name, dims, ttype, off, n, tensor_nbytes(ttype, n)))
        self.data_offset = self._pos + (-self._pos) % self.alignment
        self.tensors = []
        self._by_name = {}
        for name, dims, ttype, off, n, nb in infos:
            end = self.data_offset + off + nb
            if end > len(self.data):
                raise GGUFError("tensor %r: data [%d, %d) extends past the end of the file (%d bytes)"
                                % (name, self.data_offset + off, end, len(self.data)))
            t = TensorInfo(name, dims, ttype, off, self.data_offset + off, n, nb)
            self.tensors.append(t)
            self._by_name[name] = t

    # -- access ----------------------------------------------------------------------------
    def __contains__(self, key):
        return key in self.fields

    def get(self, key, default=None):
        """The value of key as plain python (arrays as lists), or default when absent."""
        f = self.fields.get(key)
        if f is None:
            return default
        return f.value.to_python() if isinstance(f.value, GGUFArray) else f.value

    def vtype(self, key):
        return self.fields[key].vtype

    def has_tensor(self, name):
        return name in self._by_name

    def tensor(self, name):
        t = self._by_name.get(name)
        if t is None:
            raise KeyError("no tensor %r" % name)
        return t

    def tensor_names(self):
        return [t.name for t in self.tensors]

    def tensor_bytes(self, name):
        t = self.tensor(name)
        return self.data[t.abs_offset:t.abs_offset + t.nbytes]

    def tensor_floats(self, name):
        t = self.tensor(name)
        return decode_floats(self.tensor_bytes(name), t.ttype)


def rewrite(reader):
    """A GGUFWriter holding the same keys and tensors as reader (same order, types and raw
    tensor bytes); its to_bytes() reproduces a file written with per-tensor padding."""
    w = GGUFWriter(alignment=reader.alignment, version=reader.version)
    for f in reader.fields.values():
        if f.key == "general.alignment" and f.key in w._keys:
            continue
        w.add_kv(f.key, f.value, f.vtype)
    for t in reader.tensors:
        w.add_tensor(t.name, reader.tensor_bytes(t.name), dims=t.dims, ttype=t.ttype)
    return w


def self_test():
    """Round trips through the writer and reader; raises AssertionError on a failure."""
    import math
    w = GGUFWriter()
    w.add_uint8("t.u8", 255)
    w.add_int8("t.i8", -128)
    w.add_uint16("t.u16", 65535)
    w.add_int16("t.i16", -32768)
    w.add_uint32("t.u32", 4294967295)
    w.add_int32("t.i32", -2147483648)
    w.add_uint64("t.u64", 2**64 - 1)
    w.add_int64("t.i64", -2**63)
    w.add_float32("t.f32", 1e-5)
    w.add_float64("t.f64", math.pi)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "h\u00e9llo \u2581")
    w.add_array("t.arr_u32", UINT32, [1, 2, 3])
    w.add_array("t.arr_f32", FLOAT32, [0.5, -1.25])
    w.add_array("t.arr_str", STRING, ["a", "", "\u00fc"])
    w.add_array("t.arr_bool", BOOL, [True, False])
    w.add_array("t.arr_empty", INT64, [])
    w.add_array("t.arr_nested", ARRAY, [GGUFArray(INT8, [-1, 2]), GGUFArray(STRING, ["x"])])
    for bad in (lambda: w.add_uint8("t.bad", 256), lambda: w.add_uint32("t.u32", 1),
                lambda: w.add_int32("t.bad", 1.5)):
        try:
            bad()
        except GGUFError:
            pass
        else:
            raise AssertionError("writer accepted a bad value")
    vals = [0.0, -0.0, 1.0, -2.5, 1e-3, 3.14159, 65504.0, 1.0 / 3.0, 5.96e-8, 1e30 * 0]
    w.add_tensor("f32", vals, shape=(2, 5))
    w.add_tensor("f16", vals, dims=[5, 2], ttype=F16)
    w.add_tensor("bf16", vals, dims=[10], ttype=BF16)
    w.add_tensor("raw", struct.pack("<3f", 1, 2, 3), dims=[3, 1, 1])
    w.add_tensor("f64", [1.0, 2.0], dims=[2], ttype=F64)
    blob = w.to_bytes()
    r = GGUFReader(blob)
    assert r.version == 3 and r.alignment == 32
    assert r.get("t.u8") == 255 and r.get("t.i8") == -128 and r.get("t.u16") == 65535
    assert r.get("t.i16") == -32768 and r.get("t.u32") == 4294967295
    assert r.get("t.i32") == -2147483648 and r.get("t.u64") == 2**64 - 1
    assert r.get("t.i64") == -2**63 and r.get("t.f64") == math.pi
    assert r.get("t.f32") == struct.unpack("<f", struct.pack("<f", 1e-5))[0]
    assert r.get("t.bool") is True and r.get("t.str") == "h\u00e9llo \u2581"
    assert r.get("t.arr_u32") == [1, 2, 3] and r.get("t.arr_f32") == [0.5, -1.25]
    assert r.get("t.arr_str") == ["a", "", "\u00fc"] and r.get("t.arr_bool") == [True, False]
    assert r.get("t.arr_empty") == [] and r.get("t.arr_nested") == [[-1, 2], ["x"]]
    assert r.fields["t.arr_nested"].value.items[1].elem_type == STRING
    assert [r.vtype(k) for k in ("t.u8", "t.i8", "t.u16", "t.i16", "t.u32", "t.i32", "t.f32",
                                 "t.bool", "t.str", "t.arr_u32", "t.u64", "t.i64", "t.f64")] == \
        list(range(13))
    assert r.tensor("f32").dims == [5, 2] and r.tensor("f32").shape == (2, 5)
    assert list(r.tensor_floats("f32")) == list(array("f", vals))
    f16 = list(r.tensor_floats("f16"))
    assert f16[:7] == [0.0, -0.0, 1.0, -2.5, struct.unpack("<e", struct.pack("<e", 1e-3))[0],
                       struct.unpack("<e", struct.pack("<e", 3.14159))[0], 65504.0]
    assert math.copysign(1, f16[1]) < 0
    bf = list(r.tensor_floats("bf16"))
    assert bf[2] == 1.0 and bf[3] == -2.5 and bf[5] == 3.140625
    assert bf[7] == 0.333984375     # 1/3 rounds up to 0x3EAB
    assert list(r.tensor_floats("raw")) == [1.0, 2.0, 3.0]
    assert list(r.tensor_floats("f64")) == [1.0, 2.0]
    for t in r.tensors:
        assert t.offset % 32 == 0 and t.abs_offset % 32 == 0
    assert rewrite(r).to_bytes() == blob
    # round to nearest even at the bf16 tie: 1 + 2^-8 (tie, even stays 1.0), 1 + 3*2^-8
    assert list(round_bf16([1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8])) == [1.0, 1.0 + 2.0**-6]
    # alignment other than 32
    w2 = GGUFWriter(alignment=64)
    w2.add_tensor("a", [1.0], dims=[1])
    w2.add_tensor("b", [2.0, 3.0], dims=[2])
    r2 = GGUFReader(w2.to_bytes())
    assert r2.alignment == 64 and r2.tensor("b").offset == 64 and r2.data_offset % 64 == 0
    # corrupt inputs are refused with GGUFError
    for bad in (b"GGUX" + blob[4:], blob[:4] + struct.pack("<I", 4) + blob[8:], blob[:100],
                blob[:-40]):
        try:
            GGUFReader(bad)
        except GGUFError:
            pass
        else:
            raise AssertionError("reader accepted a corrupt file")
    return True


def _main(argv):
    """`python3 morgguf.py FILE...`: print the header of each GGUF file.
    `python3 morgguf.py --self-test`: run the round-trip self test."""
    if argv[:1] == ["--self-test"]:
        self_test()
        for path in argv[1:]:
            data = open(path, "rb").read()
            same = rewrite(GGUFReader(data)).to_bytes() == data
            print("%s: rewrite %s" % (path, "identical" if same else "DIFFERS"))
            if not same:
                return 1
        print("morgguf self-test: ok")
        return 0
    for path in argv:
        r = GGUFReader(path)
        print("%s: GGUF v%d, %d keys, %d tensors, alignment %d, data at %d"
              % (path, r.version, len(r.fields), len(r.tensors), r.alignment, r.data_offset))
        for f in r.fields.values():
            v = f.value
            if isinstance(v, GGUFArray):
                shown = "[%s x %d]" % (VALUE_TYPE_NAMES[v.elem_type], len(v))
                if len(v) <= 8:
                    shown += " " + repr(v.items)
            else:
                shown = repr(v)
            print("  %-48s %-8s %s" % (f.key, VALUE_TYPE_NAMES[f.vtype], shown))
        for t in r.tensors:
            print("  %-48s %-5s %s" % (t.name, t.type_name, t.dims))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
