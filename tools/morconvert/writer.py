"""Writing the GGUF file: the header (keys and tensor infos) first, then each tensor converted
and written in turn, so memory holds one tensor at a time. The file is written under a
temporary name and renamed at the end; `verify` re-reads it with tools/morgguf.py."""

import os
import struct
import sys
import time
import zlib

from .common import ConvertError

try:
    import morgguf
except ImportError:  # pragma: no cover - run from elsewhere
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import morgguf

ALIGN = 32
_VT = {"UINT32": morgguf.UINT32, "INT32": morgguf.INT32, "FLOAT32": morgguf.FLOAT32,
       "BOOL": morgguf.BOOL, "STRING": morgguf.STRING, "UINT64": morgguf.UINT64}
_TT = {"F32": morgguf.F32, "F16": morgguf.F16, "BF16": morgguf.BF16}


def _kv_bytes(key, vtype, value):
    if vtype.startswith("ARRAY:"):
        et = _VT[vtype[6:]]
        vt, val = morgguf.ARRAY, morgguf.GGUFArray(et, value)
    else:
        vt, val = _VT[vtype], value
    try:
        body = morgguf._pack_value(vt, val, key)
    except morgguf.GGUFError as e:
        raise ConvertError("cannot write key %s: %s" % (key, e))
    return morgguf._pack_string(key) + struct.pack("<I", vt) + body


class Progress(object):
    """A one-line progress bar on stderr: percent of the tensor data, tensors done / total,
    MB written / total, the tensor being written."""

    def __init__(self, n, total_bytes, enabled, stream=None):
        self.n, self.total = n, max(total_bytes, 1)
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.done_bytes = 0
        self.i = 0
        self.last = 0.0

    def advance(self, name, nbytes, tensor_done):
        self.done_bytes += nbytes
        if tensor_done:
            self.i += 1
        if not self.enabled:
            return
        now = time.time()
        if self.i < self.n and now - self.last < 0.1:
            return
        self.last = now
        frac = min(1.0, self.done_bytes / float(self.total))
        width = 30
        k = int(frac * width + 1e-9)
        line = "\r[%s%s] %3d%% %d/%d tensors %.1f/%.1f MB %s" % (
            "#" * k, "." * (width - k), int(frac * 100 + 1e-9), self.i, self.n,
            self.done_bytes / 1e6, self.total / 1e6, name[:40])
        self.stream.write(line.ljust(110))
        if self.i == self.n:
            self.stream.write("\n")
        self.stream.flush()


def write(path, kv, tensors, progress):
    """kv: (key, vtype, value); tensors: layout.OutTensor. Returns (bytes written, crc per
    tensor name)."""
    names = set()
    infos = []
    offset = 0
    for t in tensors:
        if t.name in names:
            raise ConvertError("internal error: tensor %s planned twice" % t.name)
        names.add(t.name)
        if len(t.name.encode()) > 64:
            raise ConvertError("tensor name %s is longer than 64 bytes" % t.name)
        nm = t.name.encode("utf-8")
        infos.append(struct.pack("<Q", len(nm)) + nm + struct.pack("<I%dQ" % len(t.dims), len(t.dims), *t.dims)
                     + struct.pack("<IQ", _TT[t.ttype], offset))
        offset += t.nbytes + (-t.nbytes) % ALIGN
    header = [b"GGUF", struct.pack("<IQQ", 3, len(tensors), len(kv))]
    header += [_kv_bytes(*x) for x in kv]
    header += infos
    head = b"".join(header)
    head += bytes((-len(head)) % ALIGN)
    tmp = path + ".part"
    crcs = {}
    try:
        with open(tmp, "wb") as f:
            f.write(head)
            for t in tensors:
                crc = n = 0
                for data in t.chunks():
                    crc = zlib.crc32(data, crc)
                    n += len(data)
                    f.write(data)
                    progress.advance(t.name, len(data), n == t.nbytes)
                if n != t.nbytes:
                    raise ConvertError("internal error: %s produced %d bytes, expected %d"
                                       % (t.name, n, t.nbytes))
                crcs[t.name] = crc
                f.write(bytes((-n) % ALIGN))
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return len(head) + offset, crcs


def verify(path, kv, tensors, crcs):
    """Re-read the file with tools/morgguf.py and compare keys, tensor names, dims, types and
    data checksums with the plan. Returns a one-line summary or raises ConvertError."""
    try:
        r = morgguf.GGUFReader(path)
    except morgguf.GGUFError as e:
        raise ConvertError("--check: %s does not parse: %s" % (path, e))
    if len(r.tensors) != len(tensors) or len(r.fields) != len(kv):
        raise ConvertError("--check: %d tensors and %d keys read back, %d and %d written"
                           % (len(r.tensors), len(r.fields), len(tensors), len(kv)))
    for key, vtype, value in kv:
        got = r.get(key)
        if vtype == "FLOAT32":
            ok = got == struct.unpack("<f", struct.pack("<f", value))[0]
        else:
            ok = got == value
        if not ok:
            raise ConvertError("--check: key %s reads back as %r" % (key, got))
    for t in tensors:
        if not r.has_tensor(t.name):
            raise ConvertError("--check: tensor %s is missing" % t.name)
        ti = r.tensor(t.name)
        if ti.dims != t.dims or ti.ttype != _TT[t.ttype]:
            raise ConvertError("--check: tensor %s reads back as %s %s, written %s %s"
                               % (t.name, ti.type_name, ti.dims, t.ttype, t.dims))
        if zlib.crc32(r.tensor_bytes(t.name)) != crcs[t.name]:
            raise ConvertError("--check: the data of tensor %s differs from what was written" % t.name)
    return "check: %s reads back with %d keys and %d tensors; names, dims, types and data match" % (
        os.path.basename(path), len(kv), len(tensors))
