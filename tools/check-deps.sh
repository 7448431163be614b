#!/bin/sh
# check-deps.sh: the dependencies between the parts of src/ point one way, downwards.
#
# Usage: tools/check-deps.sh [SRC_DIR]   (default: src/ of this repository; `make check-deps`)
#
# Every .c and .h file of src/ belongs to a part, and every part has a rank (the table below;
# docs/ARCHITECTURE.md, "Dependencies", draws it). A file may use its own part and the parts of
# lower rank, never a part of higher rank, nor another part of its own rank (siblings stay
# independent of each other). Checked, after comments and string literals are removed:
#   (a) includes: `#include "x.h"` of a header of src/ (mor.h, the public header, is for all);
#   (b) names: every function, struct, union, enum or typedef named mor_* that a file of src/
#       defines belongs to that file's part; no file may name one of a higher part or of a
#       sibling (a call through mor.h or a forward declaration is still a dependency);
#   (c) placement: every .c and .h of src/ matches exactly one row of the table (a new file
#       must be placed in a part before it builds into the checked tree).
# Each violation prints as `file:line: <what> names <part> (rank r > rank s)` (a name used on
# several lines of a file: its first line, and how many more); the exit status is 1 if there
# is any, else 0. POSIX sh, find, sort and awk only.

# ---- the layer table ------------------------------------------------------------------------
# part     rank  files, as patterns relative to src/ (`*` matches any characters, `/` included)
LAYERS='
base       0     alloc.c alloc.h bytes.h dtype.h internal.h status.c unicode*.c unicode.h
thread     1     thread.c thread.h
kernels    2     kernels.h kernels/*
model      3     arch.c arch.h exit.c gguf.c gguf.h model.c model.h
work       4     work.c work.h
text       5     tokenizer*.c tokenizer*.h pretok.c stop.c
kv         5     kv.c kv.h
route      5     route.c route.h
load       6     load.c
layer      6     layer.c layer.h
session    7     session.c session.h forward.c policy.c sampler.c state.c
sched      8     sched.c
'
# ---------------------------------------------------------------------------------------------

set -u
src=${1:-$(dirname "$0")/../src}
if [ ! -d "$src" ]; then
    echo "check-deps: no directory $src" >&2
    exit 2
fi
cd "$src/.." || exit 2
top=$(basename "$src")
files=$(find "$top" -type f \( -name '*.c' -o -name '*.h' \) | LC_ALL=C sort)

LAYERS=$LAYERS TOP=$top LC_ALL=C awk '
function glob_re(p,    r, i, c) {
    r = "^"
    for (i = 1; i <= length(p); i++) {
        c = substr(p, i, 1)
        if (c == "*") r = r ".*"
        else if (c ~ /[.+?()|^$\[\]{}\\]/) r = r "\\" c
        else r = r c
    }
    return r "$"
}

# Place a path relative to TOP/ in the table: sets pt[file] and rk[file], or records an error.
function place(f,    rel, i, n, found) {
    rel = substr(f, length(ENVIRON["TOP"]) + 2)
    n = 0
    for (i = 1; i <= nrow; i++)
        if (rel ~ row_re[i]) {
            if (n == 0) found = i
            else if (row_part[i] != row_part[found]) {
                bad[++nbad] = f ":1: matches two parts of the layer table: " row_part[found] " and " row_part[i]
            }
            n++
        }
    if (n == 0) {
        bad[++nbad] = f ":1: is in no part of the layer table (tools/check-deps.sh): place it"
        return 0
    }
    pt[f] = row_part[found]
    rk[f] = row_rank[found]
    return 1
}

# The line with comments, string and character literals removed (inblock carries a block
# comment over lines).
function clean(s,    out, i, n, c, d, q) {
    out = ""
    n = length(s)
    i = 1
    while (i <= n) {
        c = substr(s, i, 1)
        d = substr(s, i, 2)
        if (inblock) {
            if (d == "*/") { inblock = 0; i += 2 } else i++
            continue
        }
        if (d == "/*") { inblock = 1; out = out " "; i += 2; continue }
        if (d == "//") break
        if (c == "\"" || c == "\047") {
            q = c
            i++
            while (i <= n && substr(s, i, 1) != q) i += substr(s, i, 1) == "\\" ? 2 : 1
            out = out " "
            i++
            continue
        }
        out = out c
        i++
    }
    return out
}

function define(name, f, ln) {
    if (!(name in owner)) { owner[name] = f; owner_line[name] = ln }
}

# "a/b/../c.h" -> "a/c.h"
function normalize(p,    n, parts, i, out, k, st) {
    n = split(p, parts, "/")
    k = 0
    for (i = 1; i <= n; i++) {
        if (parts[i] == "." || parts[i] == "") continue
        if (parts[i] == ".." && k > 0 && st[k] != "..") { k--; continue }
        st[++k] = parts[i]
    }
    out = ""
    for (i = 1; i <= k; i++) out = out (i > 1 ? "/" : "") st[i]
    return out
}

function exists(p,    l, r) {
    if (p in known) return 1
    r = (getline l < p)
    if (r >= 0) close(p)
    return r >= 0
}

# "(rank r > rank s)", or for a sibling "(rank r = rank s, siblings)".
function why(r, s) {
    if (r > s) return "(rank " r " > rank " s ")"
    return "(rank " r " = rank " s ", siblings)"
}

function uses(f, of) {   # may file f use part/rank of file of?
    return rk[of] < rk[f] || pt[of] == pt[f]
}

BEGIN {
    n = split(ENVIRON["LAYERS"], rows, "\n")
    nrow = 0
    for (i = 1; i <= n; i++) {
        if (rows[i] ~ /^[ \t]*(#|$)/) continue
        m = split(rows[i], w, /[ \t]+/)
        s = (w[1] == "") ? 2 : 1
        for (j = s + 2; j <= m; j++) {
            if (w[j] == "") continue
            nrow++
            row_part[nrow] = w[s]
            row_rank[nrow] = w[s + 1] + 0
            row_re[nrow] = glob_re(w[j])
        }
    }
}

FNR == 1 {
    inblock = 0
    pending = ""
    nfile++
    file[nfile] = FILENAME
    known[FILENAME] = 1
    is_h = FILENAME ~ /\.h$/
    depth = 0
}

{
    raw[FILENAME, FNR] = $0
    nl[FILENAME] = FNR
    c = clean($0)
    txt[FILENAME, FNR] = c

    # Definitions at file scope (depth 0): functions (not static, except static inline in a
    # header), struct / union / enum bodies, typedefs.
    if (pending != "") {                   # a function header running over several lines
        if (c ~ /\{/) define(pending, FILENAME, pending_line)
        if (c ~ /[{;]/) pending = ""
    } else if (depth == 0 && c ~ /^[A-Za-z_]/ && c !~ /^(typedef|extern|struct|union|enum)[ \t]/ &&
               (c !~ /^static[ \t]/ || (is_h && c ~ /^static[ \t]+inline[ \t]/)) &&
               match(c, /mor_[A-Za-z0-9_]*[ \t]*\(/)) {
        name = substr(c, RSTART, RLENGTH)
        sub(/[ \t]*\($/, "", name)
        rest = substr(c, RSTART + RLENGTH)
        if (rest ~ /\{/) define(name, FILENAME, FNR)
        else if (rest !~ /;/) { pending = name; pending_line = FNR }
    }
    if (depth == 0) {
        if (match(c, /^(typedef[ \t]+)?(struct|union|enum)[ \t]+mor_[A-Za-z0-9_]*[ \t]*\{/)) {
            t = substr(c, RSTART, RLENGTH)
            sub(/^(typedef[ \t]+)?(struct|union|enum)[ \t]+/, "", t)
            sub(/[ \t]*\{$/, "", t)
            define(t, FILENAME, FNR)
        } else if (c ~ /^typedef[ \t]/ && c ~ /;[ \t]*$/ &&
                   c !~ /^typedef[ \t]+(struct|union|enum)[ \t]+[A-Za-z0-9_]+[ \t]+[A-Za-z0-9_]+[ \t]*;/) {
            t = c                        # typedef <type> name; / name[..]; / (*name)(..);
            if (match(t, /\([ \t]*\*[ \t]*mor_[A-Za-z0-9_]*[ \t]*\)/)) {
                t = substr(t, RSTART, RLENGTH); gsub(/[()* \t]/, "", t)
            } else {
                sub(/(\[[^;]*\])?[ \t]*;[ \t]*$/, "", t)
                sub(/^.*[^A-Za-z0-9_]/, "", t)
            }
            if (t ~ /^mor_/) define(t, FILENAME, FNR)
        }
    }
    if (depth == 1 && c ~ /^\}[ \t]*mor_[A-Za-z0-9_]*[ \t]*;/) {
        t = c; sub(/^\}[ \t]*/, "", t); sub(/[ \t]*;.*$/, "", t)
        define(t, FILENAME, FNR)
    }
    if (c !~ /^[ \t]*#/) {
        o = c; nopen = gsub(/\{/, "", o)
        o = c; nclose = gsub(/\}/, "", o)
        depth += nopen - nclose
        if (depth < 0) depth = 0
    }
}

END {
    for (k = 1; k <= nfile; k++) place(file[k])
    for (k = 1; k <= nfile; k++) {
        f = file[k]
        if (!(f in pt)) continue
        dir = f; sub(/\/[^\/]*$/, "", dir)
        for (ln = 1; ln <= nl[f]; ln++) {
            line = raw[f, ln]
            if (txt[f, ln] ~ /^[ \t]*#[ \t]*include/ && line ~ /^[ \t]*#[ \t]*include[ \t]*"/) {
                h = line; sub(/^[ \t]*#[ \t]*include[ \t]*"/, "", h); sub(/".*$/, "", h)
                cand = normalize(dir "/" h)
                if (!exists(cand)) cand = normalize(ENVIRON["TOP"] "/" h)
                if (!(cand in pt)) continue      # mor.h, or a header outside src/
                if (!uses(f, cand))
                    bad[++nbad] = f ":" ln ": #include \"" h "\" names " pt[cand] " " why(rk[cand], rk[f])
                continue
            }
            c = txt[f, ln]
            while (match(c, /[A-Za-z_][A-Za-z0-9_]*/)) {
                id = substr(c, RSTART, RLENGTH)
                c = substr(c, RSTART + RLENGTH)
                if (id !~ /^mor_/ || !(id in owner)) continue
                of = owner[id]
                if (!(of in pt) || uses(f, of)) continue
                key = f SUBSEP id
                if (key in first) { more[key]++; continue }
                first[key] = ++nbad
                more[key] = 0
                bad[nbad] = f ":" ln ": " id " names " pt[of] " " why(rk[of], rk[f])
            }
        }
    }
    for (key in first) if (more[key]) bad[first[key]] = bad[first[key]] ", and on " more[key] " more line" (more[key] > 1 ? "s" : "")
    for (i = 1; i <= nbad; i++) print bad[i]
    if (nbad) {
        print "check-deps: " nbad " violation(s) of the layer order (tools/check-deps.sh, docs/ARCHITECTURE.md)"
        exit 1
    }
    print "check-deps: " nfile " files, every dependency points down"
}
' $files
