"""safetensors files: an 8-byte little-endian header length N, N bytes of JSON
({name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}), then the
tensor data (offsets relative to the end of the header). Read through mmap; every field is
checked and a failure names the file and the tensor."""

import json
import mmap
import os
import struct

from .common import ConvertError, DTYPE_SIZE, SrcTensor, fmt_shape, numel

MAX_HEADER = 100 << 20


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


class SafetensorsFile(object):
    def __init__(self, path, name=None):
        self.path = path
        self.name = name or os.path.basename(path)
        size = os.path.getsize(path)
        if size < 8:
            raise ConvertError("%s: truncated safetensors file (%d bytes; the 8-byte header "
                               "length is missing)" % (self.name, size))
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            if n > size - 8:
                raise ConvertError("%s: the header length %d goes past the end of the file "
                                   "(%d bytes)" % (self.name, n, size))
            if n > MAX_HEADER:
                raise ConvertError("%s: header length %d exceeds %d bytes" % (self.name, n, MAX_HEADER))
            raw = f.read(n)
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise ConvertError("%s: the safetensors header is not valid JSON (%s)" % (self.name, e))
        if not isinstance(header, dict):
            raise ConvertError("%s: the safetensors header is not a JSON object" % self.name)
        self.metadata = header.pop("__metadata__", None) or {}
        self.data_start = 8 + n
        data_len = size - self.data_start
        self._mm = None
        if data_len > 0:
            with open(path, "rb") as f:
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self.tensors = {}
        for key, e in header.items():
            what = "%s: tensor %s" % (self.name, key)
            if not isinstance(e, dict) or "dtype" not in e or "shape" not in e or "data_offsets" not in e:
                raise ConvertError("%s: header entry lacks dtype, shape or data_offsets" % what)
            dtype, shape, offs = e["dtype"], e["shape"], e["data_offsets"]
            if not isinstance(dtype, str) or dtype not in DTYPE_SIZE:
                raise ConvertError("%s has the unknown dtype %r" % (what, dtype))
            if (not isinstance(shape, list) or not all(_is_int(s) and s >= 0 for s in shape)):
                raise ConvertError("%s has a bad shape %r" % (what, shape))
            if (not isinstance(offs, list) or len(offs) != 2 or not all(_is_int(o) for o in offs)
                    or not 0 <= offs[0] <= offs[1]):
                raise ConvertError("%s has bad data_offsets %r" % (what, offs))
            if offs[1] > data_len:
                raise ConvertError("%s: data [%d, %d) goes past the end of the file (%d data bytes)"
                                   % (what, offs[0], offs[1], data_len))
            want = numel(shape) * DTYPE_SIZE[dtype]
            if offs[1] - offs[0] != want:
                raise ConvertError("%s: %d data bytes for shape %s of %s (expected %d)"
                                   % (what, offs[1] - offs[0], fmt_shape(shape), dtype, want))
            b, end = self.data_start + offs[0], self.data_start + offs[1]
            self.tensors[key] = SrcTensor(key, dtype, shape, self.name, self._getter(b, end),
                                          ident=(self.path, b, end), release=self._releaser(b, end))

    def _releaser(self, b, end):
        def release(lo, hi):
            # whole pages inside [b + lo, b + hi) leave the process's resident memory
            first = (b + lo + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE
            last = min(b + hi, end) // mmap.PAGESIZE * mmap.PAGESIZE
            if self._mm is not None and last > first and hasattr(self._mm, "madvise"):
                self._mm.madvise(mmap.MADV_DONTNEED, first, last - first)
        return release

    def _getter(self, b, end):
        def get():
            if b == end:
                return b""
            return memoryview(self._mm)[b:end]
        return get


def write_safetensors(path, tensors, metadata=None):
    """Write tensors, a list of (name, dtype, shape, raw bytes), laid out like the safetensors
    library's files: entries sorted by element size (largest first) then name, data packed in
    that order, the compact JSON header padded with spaces to a multiple of 8 bytes."""
    order = sorted(tensors, key=lambda t: (-DTYPE_SIZE[t[1]], t[0]))
    header = {}
    off = 0
    for name, dtype, shape, raw in order:
        if len(raw) != numel(shape) * DTYPE_SIZE[dtype]:
            raise ValueError("%s: %d bytes for %s %s" % (name, len(raw), dtype, shape))
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + len(raw)]}
        off += len(raw)
    if metadata is not None:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * ((-len(h)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for t in order:
            f.write(t[3])
