"""A safe parser for the YAML subset that training configs (Hydra / OmegaConf files such as
conf/pretrain/*.yaml) use. It builds only dicts, lists, str, int, float, bool and None, and
never constructs objects.

Supported: block mappings and sequences by indentation (a sequence may sit at its key's
indentation), `- key: value` items that open a mapping, flow collections `[a, b]` and
`{a: 1}` (nested), single- and double-quoted strings (with '' and the common backslash
escapes), plain scalars, comments, a leading `---`. Scalars: null / ~ / empty -> None,
true / false (any case) -> bool, decimal / 0x / 0o integers, decimals and exponents (1e-5,
3e-3, .5), .inf / .nan -> float; anything else is a string.

Refused with an error naming the line: anchors, aliases, tags, block scalars (| and >),
complex keys (?), duplicate keys, tabs in indentation, inconsistent indentation, and
multi-document streams.
"""

import re

from .common import ConvertError

_INT = re.compile(r"^[-+]?(0|[1-9][0-9_]*)$")
_HEX = re.compile(r"^0x[0-9a-fA-F_]+$")
_OCT = re.compile(r"^0o[0-7_]+$")
_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9][0-9_]*(\.[0-9_]*)?)([eE][-+]?[0-9]+)?$")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\", '"': '"', "/": "/", " ": " ",
            "a": "\a", "b": "\b", "e": "\x1b", "f": "\f", "v": "\v"}


class YAMLError(ConvertError):
    pass


class _Line(object):
    __slots__ = ("no", "indent", "text")

    def __init__(self, no, indent, text):
        self.no, self.indent, self.text = no, indent, text


def _strip_comment(s, no, src):
    out = []
    q = None
    i = 0
    while i < len(s):
        c = s[i]
        if q:
            if q == '"' and c == "\\":
                out.append(s[i:i + 2])
                i += 2
                continue
            if c == q:
                if q == "'" and s[i + 1:i + 2] == "'":
                    out.append("''")
                    i += 2
                    continue
                q = None
        elif c in "'\"" and (not out or "".join(out)[-1:] in " [{,:-" or not "".join(out).strip()):
            q = c
        elif c == "#" and (i == 0 or s[i - 1] in " \t"):
            break
        out.append(c)
        i += 1
    if q:
        raise YAMLError("%s line %d: unterminated quoted string" % (src, no))
    return "".join(out).rstrip()


def _lines(text, src):
    out = []
    for no, raw in enumerate(text.splitlines(), 1):
        s = _strip_comment(raw, no, src)
        if not s.strip():
            continue
        body = s.lstrip(" ")
        if body.startswith("\t") or (len(s) > len(body) and "\t" in s[:len(s) - len(body)]):
            raise YAMLError("%s line %d: tab in indentation" % (src, no))
        if body in ("---", "...") and len(s) == len(body):
            if out:
                raise YAMLError("%s line %d: several YAML documents are not supported" % (src, no))
            continue
        if body.startswith("%"):
            raise YAMLError("%s line %d: YAML directives are not supported" % (src, no))
        out.append(_Line(no, len(s) - len(body), body))
    return out


class _Flow(object):
    def __init__(self, s, no, src):
        self.s, self.i, self.no, self.src = s, 0, no, src

    def err(self, msg):
        raise YAMLError("%s line %d: %s" % (self.src, self.no, msg))

    def ws(self):
        while self.i < len(self.s) and self.s[self.i] in " \t":
            self.i += 1

    def value(self):
        self.ws()
        if self.i >= len(self.s):
            return None
        c = self.s[self.i]
        if c == "[":
            self.i += 1
            out = []
            self.ws()
            if self.s[self.i:self.i + 1] == "]":
                self.i += 1
                return out
            while True:
                out.append(self.value())
                self.ws()
                c = self.s[self.i:self.i + 1]
                self.i += 1
                if c == "]":
                    return out
                if c != ",":
                    self.err("expected , or ] in a flow sequence")
                self.ws()
                if self.s[self.i:self.i + 1] == "]":
                    self.i += 1
                    return out
        if c == "{":
            self.i += 1
            out = {}
            self.ws()
            if self.s[self.i:self.i + 1] == "}":
                self.i += 1
                return out
            while True:
                k = self.value()
                self.ws()
                if self.s[self.i:self.i + 1] != ":":
                    self.err("expected : in a flow mapping")
                self.i += 1
                if not isinstance(k, (str, int, float, bool)) and k is not None:
                    self.err("unsupported key in a flow mapping")
                if k in out:
                    self.err("duplicate key %r" % (k,))
                out[k] = self.value()
                self.ws()
                c = self.s[self.i:self.i + 1]
                self.i += 1
                if c == "}":
                    return out
                if c != ",":
                    self.err("expected , or } in a flow mapping")
        if c in "'\"":
            s, self.i = _quoted(self.s, self.i, self.no, self.src)
            return s
        j = self.i
        while j < len(self.s) and self.s[j] not in ",]}" and not (self.s[j] == ":" and
                                                                 self.s[j + 1:j + 2] in (" ", "")):
            j += 1
        tok = self.s[self.i:j].strip()
        self.i = j
        return _plain(tok, self.no, self.src)


def _quoted(s, i, no, src):
    q = s[i]
    j = i + 1
    out = []
    while j < len(s):
        c = s[j]
        if q == "'" and c == "'":
            if s[j + 1:j + 2] == "'":
                out.append("'")
                j += 2
                continue
            return "".join(out), j + 1
        if q == '"' and c == '"':
            return "".join(out), j + 1
        if q == '"' and c == "\\":
            e = s[j + 1:j + 2]
            if e in _ESCAPES:
                out.append(_ESCAPES[e])
                j += 2
                continue
            if e in ("x", "u", "U"):
                n = {"x": 2, "u": 4, "U": 8}[e]
                h = s[j + 2:j + 2 + n]
                if len(h) != n or not re.match(r"^[0-9a-fA-F]+$", h):
                    raise YAMLError("%s line %d: bad escape \\%s%s" % (src, no, e, h))
                out.append(chr(int(h, 16)))
                j += 2 + n
                continue
            raise YAMLError("%s line %d: unknown escape \\%s" % (src, no, e))
        out.append(c)
        j += 1
    raise YAMLError("%s line %d: unterminated quoted string" % (src, no))


def _plain(tok, no, src):
    if tok == "" or tok in ("~", "null", "Null", "NULL"):
        return None
    if tok[0] in "&*!|>%@`?":
        raise YAMLError("%s line %d: %r: anchors, aliases, tags, block scalars and complex keys "
                        "are not supported" % (src, no, tok))
    low = tok.lower()
    if low == "true":
        return True
    if low == "false":
        return False
    if _INT.match(tok):
        return int(tok.replace("_", ""))
    if _HEX.match(tok):
        return int(tok[2:].replace("_", ""), 16)
    if _OCT.match(tok):
        return int(tok[2:].replace("_", ""), 8)
    if _FLOAT.match(tok):
        return float(tok.replace("_", ""))
    if low in (".inf", "+.inf"):
        return float("inf")
    if low == "-.inf":
        return float("-inf")
    if low == ".nan":
        return float("nan")
    return tok


def _scalar(text, no, src):
    t = text.strip()
    if t[:1] in ("[", "{", "'", '"'):
        f = _Flow(t, no, src)
        v = f.value()
        f.ws()
        if f.i != len(t):
            raise YAMLError("%s line %d: unexpected text after a value: %r" % (src, no, t[f.i:]))
        return v
    return _plain(t, no, src)


def _split_key(text, no, src):
    """'key: rest' -> (key, rest) or None when text is not a mapping entry."""
    if text[:1] in ("'", '"'):
        k, j = _quoted(text, 0, no, src)
        rest = text[j:].lstrip(" ")
        if rest[:1] != ":" or rest[1:2] not in ("", " "):
            return None
        return k, rest[1:].strip()
    if text[:1] in ("[", "{"):
        return None
    if text.startswith("? "):
        raise YAMLError("%s line %d: complex keys are not supported" % (src, no))
    m = re.search(r":( |$)", text)
    if not m:
        return None
    key = _plain(text[:m.start()].strip(), no, src)
    return key, text[m.end():].strip()


def _node(lines, i, src):
    if lines[i].text == "-" or lines[i].text.startswith("- "):
        return _seq(lines, i, lines[i].indent, src)
    return _map(lines, i, lines[i].indent, src)


def _seq(lines, i, ind, src):
    out = []
    while i < len(lines) and lines[i].indent == ind and (lines[i].text == "-" or lines[i].text.startswith("- ")):
        ln = lines[i]
        rest = ln.text[1:].lstrip(" ")
        if not rest:
            if i + 1 < len(lines) and lines[i + 1].indent > ind:
                v, i = _node(lines, i + 1, src)
            else:
                v, i = None, i + 1
        elif rest.startswith("- ") or rest == "-" or (_split_key(rest, ln.no, src) is not None
                                                      and rest[:1] not in "[{"):
            lines[i] = _Line(ln.no, ind + len(ln.text) - len(rest), rest)
            v, i = _node(lines, i, src)
        else:
            v, i = _scalar(rest, ln.no, src), i + 1
        out.append(v)
    return out, i


def _map(lines, i, ind, src):
    out = {}
    while i < len(lines) and lines[i].indent == ind:
        ln = lines[i]
        if ln.text == "-" or ln.text.startswith("- "):
            raise YAMLError("%s line %d: a list item where a key was expected" % (src, ln.no))
        kv = _split_key(ln.text, ln.no, src)
        if kv is None:
            raise YAMLError("%s line %d: expected 'key: value', found %r" % (src, ln.no, ln.text))
        key, rest = kv
        if isinstance(key, (list, dict)):
            raise YAMLError("%s line %d: unsupported key" % (src, ln.no))
        if key in out:
            raise YAMLError("%s line %d: duplicate key %r" % (src, ln.no, key))
        if rest:
            v, i = _scalar(rest, ln.no, src), i + 1
        elif i + 1 < len(lines) and lines[i + 1].indent > ind:
            v, i = _node(lines, i + 1, src)
        elif (i + 1 < len(lines) and lines[i + 1].indent == ind
              and (lines[i + 1].text == "-" or lines[i + 1].text.startswith("- "))):
            v, i = _seq(lines, i + 1, ind, src)
        else:
            v, i = None, i + 1
        out[key] = v
    return out, i


def loads(text, src="<yaml>"):
    try:
        return _loads(text, src)
    except RecursionError:
        raise YAMLError("%s: nesting too deep" % src)


def _loads(text, src):
    lines = _lines(text, src)
    if not lines:
        return None
    if lines[0].indent != 0:
        raise YAMLError("%s line %d: the document must start at column 0" % (src, lines[0].no))
    if len(lines) == 1 and _split_key(lines[0].text, lines[0].no, src) is None and not \
            lines[0].text.startswith("-"):
        return _scalar(lines[0].text, lines[0].no, src)
    v, i = _node(lines, 0, src)
    if i != len(lines):
        raise YAMLError("%s line %d: bad indentation" % (src, lines[i].no))
    return v


def load(path, name=None):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConvertError("cannot read %s: %s" % (path, e.strerror or e))
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConvertError("%s is not UTF-8 text" % (name or path))
    return loads(text, name or path)
