"""pytorch_model.bin (torch.save's zip format, torch >= 1.6) read without torch.

The zip holds `<archive>/data.pkl` (a pickle of the state dict) and one entry
`<archive>/data/<key>` per storage. The pickle is read by a restricted Unpickler whose
find_class returns stand-ins for the few globals a state dict needs -- the tensor rebuild
functions of torch._utils, the typed storage classes (torch.FloatStorage, ...), dtypes and
collections.OrderedDict -- and refuses every other global with an error naming it, so nothing
from the file is ever imported or executed. Storages are tied to the zip entries through
persistent ids; a tensor is (storage, offset, size, stride), read lazily (zero-copy through
mmap for the uncompressed entries torch writes).
"""

import collections
import io
import mmap
import os
import pickle
import struct
import zipfile

from .common import ConvertError, DTYPE_SIZE, SrcTensor, numel

STORAGE_DTYPES = {
    "FloatStorage": "F32", "HalfStorage": "F16", "BFloat16Storage": "BF16",
    "DoubleStorage": "F64", "LongStorage": "I64", "IntStorage": "I32", "ShortStorage": "I16",
    "CharStorage": "I8", "ByteStorage": "U8", "BoolStorage": "BOOL",
    "UntypedStorage": "U8",
}
TORCH_DTYPES = {
    "float32": "F32", "float": "F32", "float16": "F16", "half": "F16", "bfloat16": "BF16",
    "float64": "F64", "double": "F64", "int64": "I64", "long": "I64", "int32": "I32",
    "int": "I32", "int16": "I16", "short": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL",
}


class _StorageType(object):
    def __init__(self, dtype):
        self.dtype = dtype


class _DType(object):
    def __init__(self, dtype):
        self.dtype = dtype


class _TensorClass(object):
    """Stand-in for torch.Tensor / torch.nn.Parameter as an argument of _rebuild_from_type_v2."""


class _Storage(object):
    __slots__ = ("key", "dtype", "numel")

    def __init__(self, key, dtype, n):
        self.key, self.dtype, self.numel = key, dtype, n


class _TensorRef(object):
    __slots__ = ("storage", "offset", "size", "stride", "dtype")

    def __init__(self, storage, offset, size, stride, dtype=None):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride
        self.dtype = dtype or storage.dtype


class _OrderedDict(collections.OrderedDict):
    """OrderedDict that accepts the attribute state (`_metadata`) a state dict carries."""


def _ints(x, what):
    if not isinstance(x, (tuple, list)) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                   for v in x):
        raise ConvertError("bad tensor record in the pickle: %s = %r" % (what, x))
    return tuple(x)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    if not isinstance(storage, _Storage):
        raise ConvertError("bad tensor record in the pickle: storage %r" % (storage,))
    if not isinstance(storage_offset, int) or storage_offset < 0:
        raise ConvertError("bad tensor record in the pickle: offset %r" % (storage_offset,))
    return _TensorRef(storage, storage_offset, _ints(size, "size"), _ints(stride, "stride"))


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, metadata=None):
    t = _rebuild_tensor_v2(storage, storage_offset, size, stride)
    if not isinstance(dtype, _DType):
        raise ConvertError("bad tensor record in the pickle: dtype %r" % (dtype,))
    t.dtype = dtype.dtype
    return t


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    if not isinstance(data, _TensorRef):
        raise ConvertError("bad parameter record in the pickle")
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    if not isinstance(new_type, _TensorClass) or func not in (_rebuild_tensor_v2, _rebuild_tensor_v3,
                                                              _rebuild_parameter):
        raise ConvertError("bad tensor record in the pickle")
    return func(*args)


ALLOWED = {
    ("collections", "OrderedDict"): _OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Tensor"): _TensorClass(),
    ("torch.nn.parameter", "Parameter"): _TensorClass(),
}
for _n, _d in STORAGE_DTYPES.items():
    ALLOWED[("torch", _n)] = _StorageType(_d)
for _n, _d in TORCH_DTYPES.items():
    ALLOWED[("torch", _n)] = _DType(_d)


class _Unpickler(pickle.Unpickler):
    def __init__(self, f, file_name, storages):
        pickle.Unpickler.__init__(self, f)
        self.file_name = file_name
        self.storages = storages

    def find_class(self, module, name):
        try:
            return ALLOWED[(module, name)]
        except (KeyError, TypeError):
            raise ConvertError("%s: the pickle asks for %s.%s, which is not part of a tensor state "
                               "dict; refusing to load it (only torch tensors, storages and "
                               "OrderedDict are allowed)" % (self.file_name, module, name))

    def persistent_load(self, pid):
        if (not isinstance(pid, tuple) or len(pid) != 5 or pid[0] != "storage"
                or not isinstance(pid[1], _StorageType) or not isinstance(pid[2], str)
                or not isinstance(pid[4], int) or pid[4] < 0):
            raise ConvertError("%s: unsupported persistent id %r in the pickle" % (self.file_name, pid))
        key = pid[2]
        st = self.storages.get(key)
        if st is None:
            st = self.storages[key] = _Storage(key, pid[1].dtype, pid[4])
        return st


def _local_data_offset(mm, info):
    h = info.header_offset
    if mm[h:h + 4] != b"PK\x03\x04":
        raise ConvertError("bad zip local header for %s" % info.filename)
    n, e = struct.unpack_from("<HH", mm, h + 26)
    return h + 30 + n + e


def _strided_bytes(buf, offset, shape, stride, esize):
    out = bytearray()
    last = len(shape) - 1

    def rec(dim, base):
        if dim > last:
            out.extend(buf[base * esize:(base + 1) * esize])
        elif dim == last and stride[dim] == 1:
            out.extend(buf[base * esize:(base + shape[dim]) * esize])
        else:
            for i in range(shape[dim]):
                rec(dim + 1, base + i * stride[dim])

    rec(0, offset)
    return bytes(out)


class TorchZipFile(object):
    def __init__(self, path, name=None):
        self.path = path
        self.name = name or os.path.basename(path)
        with open(path, "rb") as f:
            head = f.read(4)
        if not zipfile.is_zipfile(path):
            if head[:1] == b"\x80":
                raise ConvertError("%s: legacy (pre-1.6, non-zip) torch.save format; load and "
                                   "re-save it with a current torch, or save as safetensors"
                                   % self.name)
            raise ConvertError("%s: not a torch zip archive" % self.name)
        try:
            self.zf = zipfile.ZipFile(path)
            infos = self.zf.infolist()
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            raise ConvertError("%s: bad zip archive (%s)" % (self.name, e))
        pkl = [i for i in infos if i.filename.endswith("data.pkl") and i.filename.count("/") == 1]
        if len(pkl) != 1:
            raise ConvertError("%s: expected one <archive>/data.pkl entry, found %d"
                               % (self.name, len(pkl)))
        self.prefix = pkl[0].filename[:-len("data.pkl")]
        self.entries = {i.filename: i for i in infos}
        bo = self.entries.get(self.prefix + "byteorder")
        if bo is not None and self.zf.read(bo).strip() not in (b"little", b""):
            raise ConvertError("%s: big-endian tensor data is not supported" % self.name)
        with open(path, "rb") as f:
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self.storages = {}
        try:
            obj = _Unpickler(io.BytesIO(self.zf.read(pkl[0])), self.name, self.storages).load()
        except ConvertError:
            raise
        except Exception as e:  # malformed pickles raise many different exception types
            raise ConvertError("%s: data.pkl is not a valid state-dict pickle (%s: %s)"
                               % (self.name, e.__class__.__name__, e))
        if isinstance(obj, dict):
            for wrap in ("state_dict", "model", "module"):
                if (wrap in obj and isinstance(obj[wrap], dict)
                        and not any(isinstance(v, _TensorRef) for v in obj.values())):
                    obj = obj[wrap]
                    break
        if not isinstance(obj, dict):
            raise ConvertError("%s: the pickle holds a %s, not a state dict"
                               % (self.name, type(obj).__name__))
        self._bufs = {}
        self.tensors = {}
        for key, t in obj.items():
            if not isinstance(key, str):
                raise ConvertError("%s: state-dict key %r is not a string" % (self.name, key))
            if not isinstance(t, _TensorRef):
                raise ConvertError("%s: state-dict entry %s is a %s, not a tensor"
                                   % (self.name, key, type(t).__name__))
            self.tensors[key] = self._tensor(key, t)

    def _storage_buf(self, st):
        buf = self._bufs.get(st.key)
        if buf is None:
            info = self.entries.get(self.prefix + "data/" + st.key)
            if info is None:
                raise ConvertError("%s: storage %s is missing from the archive" % (self.name, st.key))
            if info.compress_type == zipfile.ZIP_STORED:
                off = _local_data_offset(self._mm, info)
                if off + info.file_size > len(self._mm):
                    raise ConvertError("%s: storage %s goes past the end of the file"
                                       % (self.name, st.key))
                buf = memoryview(self._mm)[off:off + info.file_size]
            else:
                buf = memoryview(self.zf.read(info))
            self._bufs[st.key] = buf
        return buf

    def _tensor(self, key, t):
        st = t.storage
        dtype = t.dtype
        size, stride = t.size, t.stride
        if len(size) != len(stride) or any(s < 0 for s in size) or any(s < 0 for s in stride):
            raise ConvertError("%s: tensor %s has size %r and stride %r" % (self.name, key, size, stride))
        esize = DTYPE_SIZE[dtype]
        st_esize = DTYPE_SIZE[st.dtype]
        if st_esize != esize:   # untyped storage: numel counts bytes
            if st.dtype != "U8":
                raise ConvertError("%s: tensor %s: dtype %s on a %s storage" % (self.name, key, dtype, st.dtype))
        n = numel(size)
        span = 1 + sum((s - 1) * d for s, d in zip(size, stride)) if n else 0
        st_bytes = st.numel * st_esize
        if n and (t.offset + span) * esize > st_bytes:
            raise ConvertError("%s: tensor %s (offset %d, size %r, stride %r) lies outside its "
                               "storage of %d bytes" % (self.name, key, t.offset, size, stride, st_bytes))
        contiguous = True
        expect = 1
        for s, d in reversed(list(zip(size, stride))):
            if s != 1 and d != expect:
                contiguous = False
            expect *= s

        def get():
            buf = self._storage_buf(st)
            if len(buf) != st_bytes:
                raise ConvertError("%s: storage %s holds %d bytes, the pickle says %d"
                                   % (self.name, st.key, len(buf), st_bytes))
            if contiguous:
                return buf[t.offset * esize:(t.offset + n) * esize]
            return _strided_bytes(buf, t.offset, size, stride, esize)

        ident = (self.path, st.key, t.offset, size, stride)
        return SrcTensor(key, dtype, size, self.name, get, ident=ident)
