"""Reading a checkpoint directory: config.json, the weight files (model.safetensors, sharded
safetensors with model.safetensors.index.json, pytorch_model.bin, sharded .bin with its index)
and an optional PEFT adapter (adapter_config.json + adapter_model.safetensors / .bin)."""

import glob
import json
import os
import re

from .common import ConvertError
from .safetensors import SafetensorsFile
from .torchzip import TorchZipFile


def read_json(path, what=None):
    what = what or os.path.basename(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConvertError("cannot read %s: %s" % (path, e.strerror or e))
    try:
        return json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise ConvertError("%s is not UTF-8 text" % what)
    except (ValueError, RecursionError) as e:
        raise ConvertError("%s is not valid JSON (%s)" % (what, e))


def open_weights(path):
    name = os.path.basename(path)
    if name.endswith(".safetensors"):
        return SafetensorsFile(path)
    if name.endswith(".bin") or name.endswith(".pt") or name.endswith(".pth"):
        return TorchZipFile(path)
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"PK":
        return TorchZipFile(path)
    return SafetensorsFile(path)


def _load_index(dirpath, index_name):
    idx = read_json(os.path.join(dirpath, index_name))
    wm = idx.get("weight_map") if isinstance(idx, dict) else None
    if not isinstance(wm, dict) or not wm:
        raise ConvertError("%s has no weight_map" % index_name)
    files = []
    for key, fn in wm.items():
        if not isinstance(fn, str) or "/" in fn or "\\" in fn or fn.startswith("."):
            raise ConvertError("%s: bad file name %r for %s" % (index_name, fn, key))
        if fn not in files:
            files.append(fn)
    return wm, files


class Checkpoint(object):
    """dir, config (dict), tensors (key -> SrcTensor, all weight files merged), files (names
    read), adapter_config (dict or None), adapter_tensors (key -> SrcTensor)."""

    def __init__(self, path, weights=None, adapter=None, use_adapter=True):
        if os.path.isfile(path):
            weights = weights or path
            path = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(path):
            raise ConvertError("%s: no such directory" % path)
        self.dir = path
        cfg_path = os.path.join(path, "config.json")
        if not os.path.exists(cfg_path):
            raise ConvertError("%s: no config.json" % path)
        self.config = read_json(cfg_path)
        if not isinstance(self.config, dict):
            raise ConvertError("config.json is not a JSON object")
        self.files = []
        self.tensors = {}
        for fp in self._weight_files(weights):
            f = open_weights(fp)
            self.files.append(f.name)
            for k, t in f.tensors.items():
                if k in self.tensors:
                    raise ConvertError("tensor %s is in both %s and %s" % (k, self.tensors[k].file, f.name))
                self.tensors[k] = t
        self.check_index()
        self.adapter_config = None
        self.adapter_tensors = {}
        self.adapter_files = []
        adir = adapter or (path if use_adapter else None)
        if adir:
            self._load_adapter(adir, required=adapter is not None)

    def _weight_files(self, weights):
        d = self.dir
        if weights:
            return [weights if os.path.isabs(weights) or os.path.exists(weights) else os.path.join(d, weights)]
        for index, single, pattern in (
                ("model.safetensors.index.json", "model.safetensors", "model-*-of-*.safetensors"),
                ("pytorch_model.bin.index.json", "pytorch_model.bin", "pytorch_model-*-of-*.bin")):
            ip = os.path.join(d, index)
            if os.path.exists(ip):
                wm, files = _load_index(d, index)
                paths = []
                for fn in files:
                    fp = os.path.join(d, fn)
                    if not os.path.exists(fp):
                        raise ConvertError("%s names %s, which does not exist" % (index, fn))
                    paths.append(fp)
                self._index = (index, wm)
                return paths
            if os.path.exists(os.path.join(d, single)):
                return [os.path.join(d, single)]
            shards = sorted(glob.glob(os.path.join(d, pattern)))
            if shards:
                m = re.search(r"-of-(\d+)\.", os.path.basename(shards[0]))
                if m and int(m.group(1)) != len(shards):
                    raise ConvertError("%d of %s shards found and no %s"
                                       % (len(shards), m.group(1), index))
                return shards
        raise ConvertError("%s: no weights (model.safetensors, model.safetensors.index.json, "
                           "pytorch_model.bin or pytorch_model.bin.index.json)" % d)

    def check_index(self):
        idx = getattr(self, "_index", None)
        if not idx:
            return
        index, wm = idx
        for key, fn in wm.items():
            t = self.tensors.get(key)
            if t is None or t.file != fn:
                raise ConvertError("%s says %s is in %s, but it is not there" % (index, key, fn))

    def _load_adapter(self, adir, required):
        cp = os.path.join(adir, "adapter_config.json")
        if not os.path.exists(cp):
            if required:
                raise ConvertError("%s: no adapter_config.json" % adir)
            return
        cfg = read_json(cp)
        if not isinstance(cfg, dict):
            raise ConvertError("adapter_config.json is not a JSON object")
        self.adapter_config = cfg
        for fn in ("adapter_model.safetensors", "adapter_model.bin"):
            fp = os.path.join(adir, fn)
            if os.path.exists(fp):
                f = open_weights(fp)
                self.adapter_files.append(f.name)
                self.adapter_tensors = dict(f.tensors)
                return
        raise ConvertError("%s: adapter_config.json without adapter_model.safetensors or "
                           "adapter_model.bin" % adir)
