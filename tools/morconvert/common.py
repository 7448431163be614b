"""Shared pieces: the error type, messages, dtypes and the source-tensor abstraction."""

import hashlib
import sys


class ConvertError(Exception):
    """An expected failure (bad input, unsupported feature). The command line prints the
    message and exits with status 1, without a traceback."""


# dtype name -> bytes per element. Only F32, F16 and BF16 can be converted; the others are
# listed so that files holding them can be parsed and the error can name the tensor.
DTYPE_SIZE = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8,
    "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}
FLOAT_DTYPES = ("F32", "F16", "BF16")


class Log(object):
    """Messages on stderr. quiet drops info lines (warnings and errors always show)."""

    def __init__(self, quiet=False, stream=None):
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.warnings = []

    def info(self, msg):
        if not self.quiet:
            self.stream.write("mor-convert: %s\n" % msg)
            self.stream.flush()

    def warn(self, msg):
        self.warnings.append(msg)
        self.stream.write("mor-convert: warning: %s\n" % msg)
        self.stream.flush()


def numel(shape):
    n = 1
    for s in shape:
        n *= int(s)
    return n


def fmt_shape(shape):
    return "[%s]" % ", ".join(str(int(s)) for s in shape)


class SrcTensor(object):
    """A tensor of a checkpoint file: key, dtype (see DTYPE_SIZE), shape (outermost first,
    as torch), where it comes from (file) and a function that returns its bytes, contiguous
    and little-endian. `ident` identifies the underlying storage region when the file shares
    storage between keys (torch pickles), so aliases compare equal without reading."""

    __slots__ = ("key", "dtype", "shape", "file", "_get", "ident", "_digest", "_release")

    def __init__(self, key, dtype, shape, file, get, ident=None, release=None):
        self.key = key
        self.dtype = dtype
        self.shape = tuple(int(s) for s in shape)
        self.file = file
        self._get = get
        self.ident = ident
        self._digest = None
        self._release = release

    @property
    def numel(self):
        return numel(self.shape)

    @property
    def nbytes(self):
        return self.numel * DTYPE_SIZE[self.dtype]

    def where(self):
        return "%s (in %s)" % (self.key, self.file)

    def require_float(self):
        if self.dtype not in FLOAT_DTYPES:
            raise ConvertError("tensor %s has dtype %s; only F32, F16 and BF16 tensors can be "
                               "converted" % (self.where(), self.dtype))

    def data(self):
        """The raw bytes (bytes or memoryview) in the tensor's own dtype."""
        self.require_float()
        return self._get()

    def release(self, lo, hi):
        """Bytes [lo, hi) of the tensor are no longer needed: a mapped file drops its pages
        from memory (they are read again from the file if needed). Nothing otherwise."""
        if self._release is not None:
            self._release(lo, hi)

    def digest(self):
        """A hash of dtype, shape and bytes (cached)."""
        if self._digest is None:
            h = hashlib.blake2b(digest_size=20)
            h.update(("%s%r" % (self.dtype, self.shape)).encode())
            h.update(self.data())
            self._digest = h.digest()
            self.release(0, self.nbytes)
        return self._digest

    def same(self, other):
        """True when both tensors hold the same dtype, shape and bytes."""
        if other is self:
            return True
        if self.dtype != other.dtype or self.shape != other.shape:
            return False
        if self.ident is not None and self.ident == other.ident:
            return True
        return self.digest() == other.digest()

    def __repr__(self):
        return "SrcTensor(%s, %s, %s)" % (self.key, self.dtype, fmt_shape(self.shape))
