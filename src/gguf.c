// gguf.c: GGUF v3 parser. Validates the whole header (counts, lengths, types, shapes,
// offsets, alignment) with overflow-checked arithmetic before any tensor pointer is formed.
//
// It never trusts a length: every string, array and tensor extent is checked against the
// bytes left in the image before anything is read or allocated. Allocation is proportional
// to the number of keys and tensors, both capped. Nothing here asserts on input.
#include "gguf.h"
#include "internal.h"

#include <stdio.h>

// ---- type tables ---------------------------------------------------------------------------

typedef struct {
    const char *name;
    uint32_t    block;   // elements per block
    uint32_t    bytes;   // bytes per block
} dtype_info;

static dtype_info dtype_lookup(uint32_t t) {
    switch (t) {
    case 0:  return (dtype_info){"F32", 1, 4};
    case 1:  return (dtype_info){"F16", 1, 2};
    case 2:  return (dtype_info){"Q4_0", 32, 18};
    case 3:  return (dtype_info){"Q4_1", 32, 20};
    case 6:  return (dtype_info){"Q5_0", 32, 22};
    case 7:  return (dtype_info){"Q5_1", 32, 24};
    case 8:  return (dtype_info){"Q8_0", 32, 34};
    case 9:  return (dtype_info){"Q8_1", 32, 36};
    case 10: return (dtype_info){"Q2_K", 256, 84};
    case 11: return (dtype_info){"Q3_K", 256, 110};
    case 12: return (dtype_info){"Q4_K", 256, 144};
    case 13: return (dtype_info){"Q5_K", 256, 176};
    case 14: return (dtype_info){"Q6_K", 256, 210};
    case 15: return (dtype_info){"Q8_K", 256, 292};
    case 16: return (dtype_info){"IQ2_XXS", 256, 66};
    case 17: return (dtype_info){"IQ2_XS", 256, 74};
    case 18: return (dtype_info){"IQ3_XXS", 256, 98};
    case 19: return (dtype_info){"IQ1_S", 256, 50};
    case 20: return (dtype_info){"IQ4_NL", 32, 18};
    case 21: return (dtype_info){"IQ3_S", 256, 110};
    case 22: return (dtype_info){"IQ2_S", 256, 82};
    case 23: return (dtype_info){"IQ4_XS", 256, 136};
    case 24: return (dtype_info){"I8", 1, 1};
    case 25: return (dtype_info){"I16", 1, 2};
    case 26: return (dtype_info){"I32", 1, 4};
    case 27: return (dtype_info){"I64", 1, 8};
    case 28: return (dtype_info){"F64", 1, 8};
    case 29: return (dtype_info){"IQ1_M", 256, 56};
    case 30: return (dtype_info){"BF16", 1, 2};
    case 34: return (dtype_info){"TQ1_0", 256, 54};
    case 35: return (dtype_info){"TQ2_0", 256, 66};
    default: return (dtype_info){NULL, 0, 0};
    }
}

const char *mor__dtype_name(uint32_t t) {
    const char *n = dtype_lookup(t).name;
    return n ? n : "unknown";
}

uint64_t mor__dtype_size(uint32_t t, uint64_t n) {
    dtype_info d = dtype_lookup(t);
    if (!d.name || n % d.block) return 0;
    uint64_t out;
    if (mor__mul_u64(n / d.block, d.bytes, &out)) return 0;
    return out;
}

uint32_t mor__gguf_vtype_size(uint32_t t) {
    switch (t) {
    case MOR__GGUF_UINT8: case MOR__GGUF_INT8: case MOR__GGUF_BOOL: return 1;
    case MOR__GGUF_UINT16: case MOR__GGUF_INT16: return 2;
    case MOR__GGUF_UINT32: case MOR__GGUF_INT32: case MOR__GGUF_FLOAT32: return 4;
    case MOR__GGUF_UINT64: case MOR__GGUF_INT64: case MOR__GGUF_FLOAT64: return 8;
    default: return 0;
    }
}

static const char *vtype_name(uint32_t t) {
    static const char *names[] = {"UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "FLOAT32",
                                  "BOOL", "STRING", "ARRAY", "UINT64", "INT64", "FLOAT64"};
    return t < MOR__GGUF_VTYPE_COUNT ? names[t] : "unknown";
}

// ---- cursor --------------------------------------------------------------------------------

typedef struct {
    const uint8_t *p;
    uint64_t       size;
    uint64_t       off;
    char          *err;
    size_t         err_n;
} cursor;

static uint64_t rd_le(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static int need(cursor *c, uint64_t n, const char *what) {
    if (n > c->size - c->off)
        return mor__errf(c->err, c->err_n, MOR_E_FORMAT,
                         "truncated file: %s at offset %llu needs %llu bytes, %llu left", what,
                         (unsigned long long)c->off, (unsigned long long)n,
                         (unsigned long long)(c->size - c->off));
    return MOR_OK;
}

static int rd_u32(cursor *c, uint32_t *v, const char *what) {
    int s = need(c, 4, what);
    if (s) return s;
    *v = (uint32_t)rd_le(c->p + c->off, 4);
    c->off += 4;
    return MOR_OK;
}

static int rd_u64(cursor *c, uint64_t *v, const char *what) {
    int s = need(c, 8, what);
    if (s) return s;
    *v = rd_le(c->p + c->off, 8);
    c->off += 8;
    return MOR_OK;
}

// Reads a string record; checks length against max and the bytes left.
static int rd_str(cursor *c, mor__gguf_str *s, uint64_t max, const char *what) {
    uint64_t at = c->off, len;
    int st = rd_u64(c, &len, what);
    if (st) return st;
    if (len > max)
        return mor__errf(c->err, c->err_n, MOR_E_FORMAT,
                         "%s at offset %llu: length %llu exceeds the limit %llu", what,
                         (unsigned long long)at, (unsigned long long)len, (unsigned long long)max);
    if ((st = need(c, len, what))) return st;
    s->ptr = (const char *)(c->p + c->off);
    s->len = len;
    c->off += len;
    return MOR_OK;
}

// Skips over one value of type t (depth = nesting of arrays), validating it.
static int skip_value(cursor *c, uint32_t t, int depth, const mor__gguf_str *key) {
    uint64_t at = c->off;
    if (t == MOR__GGUF_STRING) {
        mor__gguf_str s;
        char what[128];
        snprintf(what, sizeof what, "string value of key '%.*s'", (int)MOR__MIN(key->len, 64), key->ptr);
        return rd_str(c, &s, MOR__GGUF_MAX_STRING, what);
    }
    if (t == MOR__GGUF_ARRAY) {
        if (depth >= 2)
            return mor__errf(c->err, c->err_n, MOR_E_FORMAT,
                             "key '%.*s': arrays nested deeper than 2 at offset %llu",
                             (int)key->len, key->ptr, (unsigned long long)at);
        uint32_t et;
        uint64_t n;
        int s;
        if ((s = rd_u32(c, &et, "array element type"))) return s;
        if ((s = rd_u64(c, &n, "array length"))) return s;
        if (et >= MOR__GGUF_VTYPE_COUNT)
            return mor__errf(c->err, c->err_n, MOR_E_FORMAT,
                             "key '%.*s': bad array element type %u at offset %llu",
                             (int)key->len, key->ptr, et, (unsigned long long)at);
        if (n > MOR__GGUF_MAX_ARRAY)
            return mor__errf(c->err, c->err_n, MOR_E_FORMAT,
                             "key '%.*s': array length %llu exceeds the limit %u at offset %llu",
                             (int)key->len, key->ptr, (unsigned long long)n, MOR__GGUF_MAX_ARRAY,
                             (unsigned long long)at);
        uint32_t es = mor__gguf_vtype_size(et);
        if (es) {
            uint64_t bytes;
            if (mor__mul_u64(n, es, &bytes) || bytes > c->size - c->off)
                return mor__errf(c->err, c->err_n, MOR_E_FORMAT,
                                 "key '%.*s': array of %llu %s at offset %llu runs past the end of "
                                 "the file",
                                 (int)key->len, key->ptr, (unsigned long long)n, vtype_name(et),
                                 (unsigned long long)at);
            if (et == MOR__GGUF_BOOL)
                for (uint64_t i = 0; i < n; i++)
                    if (c->p[c->off + i] > 1)
                        return mor__errf(c->err, c->err_n, MOR_E_FORMAT,
                                         "key '%.*s': BOOL element %llu is %u, not 0 or 1",
                                         (int)key->len, key->ptr, (unsigned long long)i,
                                         c->p[c->off + i]);
            c->off += bytes;
            return MOR_OK;
        }
        // Each string or nested array takes at least 8 bytes: bound n before looping.
        if (n > (c->size - c->off) / 8)
            return mor__errf(c->err, c->err_n, MOR_E_FORMAT,
                             "key '%.*s': array of %llu %s at offset %llu runs past the end of "
                             "the file",
                             (int)key->len, key->ptr, (unsigned long long)n, vtype_name(et),
                             (unsigned long long)at);
        for (uint64_t i = 0; i < n; i++) {
            int s2 = skip_value(c, et, depth + 1, key);
            if (s2) return s2;
        }
        return MOR_OK;
    }
    uint32_t sz = mor__gguf_vtype_size(t);
    if (!sz)
        return mor__errf(c->err, c->err_n, MOR_E_FORMAT, "key '%.*s': bad value type %u at offset %llu",
                         (int)key->len, key->ptr, t, (unsigned long long)at);
    int s = need(c, sz, "value");
    if (s) return s;
    if (t == MOR__GGUF_BOOL && c->p[c->off] > 1)
        return mor__errf(c->err, c->err_n, MOR_E_FORMAT,
                         "key '%.*s': BOOL value is %u at offset %llu, not 0 or 1", (int)key->len,
                         key->ptr, c->p[c->off], (unsigned long long)c->off);
    c->off += sz;
    return MOR_OK;
}

static int str_eq(mor__gguf_str s, const char *z) {
    size_t n = strlen(z);
    return s.len == n && memcmp(s.ptr, z, n) == 0;
}

// ---- hashing for duplicate detection -------------------------------------------------------

// ---- name index ----------------------------------------------------------------------------
//
// Keys and tensor names are looked up through an index sorted by name, built once per parse:
// a stable merge sort (O(n log n) comparisons whatever the names, so no crafted set of names
// can make it quadratic, as colliding names can with a hash table), then binary search.
// Duplicates are adjacent in the sorted order, which makes the uniqueness check linear too.

// Name comparisons made by this thread (sorting and lookups); a deterministic measure of the
// work, read by the tests. Thread-local: parses on different threads never share it.
static _Thread_local uint64_t name_compares;

uint64_t mor__gguf_name_compares(void) { return name_compares; }

typedef struct {
    const mor__gguf *g;
    int              tensors;  // 1: index of g->tensors, 0: of g->kv
} name_src;

static mor__gguf_str name_at(const name_src *src, uint32_t i) {
    if (src->tensors) {
        const mor__gguf_tensor *t = &src->g->tensors[i];
        return (mor__gguf_str){t->name, strlen(t->name)};
    }
    return src->g->kv[i].key;
}

// Byte order, then length (a prefix sorts first), as strcmp orders strings without NULs.
static int name_cmp(mor__gguf_str a, const char *b, uint64_t b_len) {
    name_compares++;
    int c = memcmp(a.ptr, b, (size_t)MOR__MIN(a.len, b_len));
    if (c) return c;
    return a.len < b_len ? -1 : a.len > b_len;
}

static int idx_cmp(const name_src *src, uint32_t a, uint32_t b) {
    mor__gguf_str nb = name_at(src, b);
    return name_cmp(name_at(src, a), nb.ptr, nb.len);
}

// Bottom-up merge sort of idx[0..n) by name; stable, so equal names keep their file order.
static int sort_index(const name_src *src, uint32_t *idx, uint64_t n) {
    const mor_allocator *al = src->g->alloc;
    uint32_t *tmp = mor__alloc(al, (size_t)n, sizeof *tmp, 0), *a = idx, *b = tmp;
    if (!tmp) return MOR_E_NOMEM;
    for (uint64_t w = 1; w < n; w *= 2) {
        for (uint64_t lo = 0; lo < n; lo += 2 * w) {
            uint64_t mid = MOR__MIN(lo + w, n), hi = MOR__MIN(lo + 2 * w, n), i = lo, j = mid, k = lo;
            while (i < mid && j < hi) b[k++] = idx_cmp(src, a[j], a[i]) < 0 ? a[j++] : a[i++];
            while (i < mid) b[k++] = a[i++];
            while (j < hi) b[k++] = a[j++];
        }
        uint32_t *t = a;
        a = b;
        b = t;
    }
    if (a != idx) memcpy(idx, a, n * sizeof *idx);
    mor__free(al, tmp);
    return MOR_OK;
}

// Builds the sorted index of n names into *out (owned by g). *dup receives the position in
// file order of the first name that repeats an earlier one, or UINT64_MAX.
static int build_index(const mor__gguf *g, int tensors, uint64_t n, uint32_t **out, uint64_t *dup) {
    name_src src = {g, tensors};
    uint32_t *idx = mor__alloc(g->alloc, (size_t)n, sizeof *idx, 0);
    if (!idx) return MOR_E_NOMEM;
    for (uint64_t i = 0; i < n; i++) idx[i] = (uint32_t)i;
    if (sort_index(&src, idx, n)) {
        mor__free(g->alloc, idx);
        return MOR_E_NOMEM;
    }
    *dup = UINT64_MAX;
    for (uint64_t i = 1; i < n; i++)  // stable: the later of two equal names comes second
        if (idx[i] < *dup && idx_cmp(&src, idx[i - 1], idx[i]) == 0) *dup = idx[i];
    *out = idx;
    return MOR_OK;
}

// Binary search of the index for `name` (len bytes): the element's position or -1.
static int64_t index_find(const mor__gguf *g, int tensors, const uint32_t *idx, uint64_t n,
                          const char *name, uint64_t len) {
    name_src src = {g, tensors};
    uint64_t lo = 0, hi = n;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        int c = name_cmp(name_at(&src, idx[mid]), name, len);
        if (c == 0) return idx[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return -1;
}

// ---- parse ---------------------------------------------------------------------------------

void mor__gguf_free(mor__gguf *g) {
    if (!g) return;
    mor__free(g->alloc, g->kv);
    mor__free(g->alloc, g->tensors);
    mor__free(g->alloc, g->kv_index);
    mor__free(g->alloc, g->tensor_index);
    const mor_allocator *a = g->alloc;
    memset(g, 0, sizeof *g);
    g->alloc = a;
}

static int parse(mor__gguf *g, cursor *c) {
    int s;
    if (c->size < 4 || memcmp(c->p, "GGUF", 4) != 0) {
        if (c->size < 4)
            return mor__errf(c->err, c->err_n, MOR_E_FORMAT,
                             "not a GGUF file: %llu bytes, too short for the magic",
                             (unsigned long long)c->size);
        return mor__errf(c->err, c->err_n, MOR_E_FORMAT,
                         "not a GGUF file: bad magic %02x %02x %02x %02x at offset 0 (expected "
                         "'GGUF')",
                         c->p[0], c->p[1], c->p[2], c->p[3]);
    }
    c->off = 4;
    if ((s = rd_u32(c, &g->version, "version"))) return s;
    if (g->version != 2 && g->version != 3) {
        if (g->version >= 0x01000000u)
            return mor__errf(c->err, c->err_n, MOR_E_UNSUPPORTED,
                             "GGUF version field 0x%08x looks big-endian; only little-endian "
                             "files are supported",
                             g->version);
        return mor__errf(c->err, c->err_n, MOR_E_UNSUPPORTED,
                         "unsupported GGUF version %u at offset 4 (supported: 2 and 3)", g->version);
    }
    uint64_t n_tensors, n_kv;
    if ((s = rd_u64(c, &n_tensors, "tensor count"))) return s;
    if ((s = rd_u64(c, &n_kv, "metadata key count"))) return s;
    if (n_tensors > MOR__GGUF_MAX_TENSORS)
        return mor__errf(c->err, c->err_n, MOR_E_FORMAT,
                         "tensor count %llu at offset 8 exceeds the limit %d",
                         (unsigned long long)n_tensors, MOR__GGUF_MAX_TENSORS);
    if (n_kv > MOR__GGUF_MAX_KV)
        return mor__errf(c->err, c->err_n, MOR_E_FORMAT,
                         "metadata key count %llu at offset 16 exceeds the limit %d",
                         (unsigned long long)n_kv, MOR__GGUF_MAX_KV);
    // Each key takes at least 12 bytes and each tensor info at least 24: bound before alloc.
    uint64_t left = c->size - c->off;
    if (n_kv > left / 12 || n_tensors > left / 24)
        return mor__errf(c->err, c->err_n, MOR_E_FORMAT,
                         "%llu keys and %llu tensors cannot fit in the %llu bytes after the "
                         "header",
                         (unsigned long long)n_kv, (unsigned long long)n_tensors,
                         (unsigned long long)left);

    g->kv = mor__alloc(g->alloc, (size_t)n_kv, sizeof *g->kv, 1);
    g->tensors = mor__alloc(g->alloc, (size_t)n_tensors, sizeof *g->tensors, 1);
    if (!g->kv || !g->tensors) return mor__errf(c->err, c->err_n, MOR_E_NOMEM, "out of memory");

    g->alignment = 32;
    for (uint64_t i = 0; i < n_kv; i++) {
        mor__gguf_kv *kv = &g->kv[i];
        uint64_t at = c->off;
        if ((s = rd_str(c, &kv->key, 65535, "metadata key"))) return s;
        if (kv->key.len == 0) {
            s = mor__errf(c->err, c->err_n, MOR_E_FORMAT, "empty metadata key at offset %llu",
                          (unsigned long long)at);
            return s;
        }
        if ((s = rd_u32(c, &kv->type, "value type"))) return s;
        if (kv->type >= MOR__GGUF_VTYPE_COUNT) {
            s = mor__errf(c->err, c->err_n, MOR_E_FORMAT, "key '%.*s': bad value type %u at offset %llu",
                          (int)MOR__MIN(kv->key.len, 200), kv->key.ptr, kv->type,
                          (unsigned long long)(c->off - 4));
            return s;
        }
        kv->offset = c->off;
        kv->data = c->p + c->off;
        if (kv->type == MOR__GGUF_ARRAY && c->size - c->off >= 12) {
            kv->arr_type = (uint32_t)rd_le(c->p + c->off, 4);
            kv->arr_n = rd_le(c->p + c->off + 4, 8);
            kv->data = c->p + c->off + 12;
        }
        if ((s = skip_value(c, kv->type, 0, &kv->key))) return s;
        g->n_kv = i + 1;
        if (str_eq(kv->key, "general.alignment")) {
            if (kv->type != MOR__GGUF_UINT32) {
                s = mor__errf(c->err, c->err_n, MOR_E_FORMAT,
                              "general.alignment has type %s, expected UINT32", vtype_name(kv->type));
                return s;
            }
            uint32_t a = (uint32_t)rd_le(kv->data, 4);
            if (a == 0 || (a & (a - 1)) || a > (1u << 20)) {
                s = mor__errf(c->err, c->err_n, MOR_E_FORMAT,
                              "general.alignment is %u: must be a power of two between 1 and "
                              "1048576",
                              a);
                return s;
            }
            g->alignment = a;
        }
    }
    uint64_t dup;
    if (build_index(g, 0, n_kv, &g->kv_index, &dup))
        return mor__errf(c->err, c->err_n, MOR_E_NOMEM, "out of memory");
    if (dup != UINT64_MAX) {
        const mor__gguf_kv *kv = &g->kv[dup];
        return mor__errf(c->err, c->err_n, MOR_E_FORMAT, "duplicate metadata key '%.*s' at offset %llu",
                         (int)MOR__MIN(kv->key.len, 200), kv->key.ptr,
                         (unsigned long long)((const uint8_t *)kv->key.ptr - c->p - 8));
    }

    for (uint64_t i = 0; i < n_tensors; i++) {
        mor__gguf_tensor *t = &g->tensors[i];
        uint64_t at = c->off;
        mor__gguf_str name;
        if ((s = rd_str(c, &name, MOR__GGUF_MAX_NAME, "tensor name"))) return s;
        if (name.len == 0) {
            s = mor__errf(c->err, c->err_n, MOR_E_FORMAT, "empty tensor name at offset %llu",
                          (unsigned long long)at);
            return s;
        }
        if (memchr(name.ptr, 0, name.len)) {
            s = mor__errf(c->err, c->err_n, MOR_E_FORMAT, "tensor name at offset %llu contains a NUL byte",
                          (unsigned long long)at);
            return s;
        }
        memcpy(t->name, name.ptr, name.len);
        t->name[name.len] = 0;
        t->info_offset = at;
        char what[MOR__GGUF_MAX_NAME + 48];
        snprintf(what, sizeof what, "dimension count of tensor '%s'", t->name);
        if ((s = rd_u32(c, &t->n_dims, what))) return s;
        if (t->n_dims < 1 || t->n_dims > 4) {
            s = mor__errf(c->err, c->err_n, MOR_E_FORMAT,
                          "tensor '%s': %u dimensions (must be 1 to 4)", t->name, t->n_dims);
            return s;
        }
        t->n_elems = 1;
        for (uint32_t d = 0; d < 4; d++) t->dims[d] = 1;
        for (uint32_t d = 0; d < t->n_dims; d++) {
            snprintf(what, sizeof what, "dimension %u of tensor '%s'", d, t->name);
            if ((s = rd_u64(c, &t->dims[d], what))) return s;
            if (t->dims[d] == 0 || t->dims[d] > ((uint64_t)1 << 40)) {
                s = mor__errf(c->err, c->err_n, MOR_E_FORMAT, "tensor '%s': dimension %u is %llu",
                              t->name, d, (unsigned long long)t->dims[d]);
                return s;
            }
            if (mor__mul_u64(t->n_elems, t->dims[d], &t->n_elems) || t->n_elems > ((uint64_t)1 << 40)) {
                s = mor__errf(c->err, c->err_n, MOR_E_FORMAT,
                              "tensor '%s': element count overflows (dimension %u = %llu)", t->name,
                              d, (unsigned long long)t->dims[d]);
                return s;
            }
        }
        snprintf(what, sizeof what, "type of tensor '%s'", t->name);
        if ((s = rd_u32(c, &t->type, what))) return s;
        dtype_info di = dtype_lookup(t->type);
        if (!di.name) {
            s = mor__errf(c->err, c->err_n, MOR_E_FORMAT, "tensor '%s': unknown tensor type id %u",
                          t->name, t->type);
            return s;
        }
        if (t->dims[0] % di.block) {
            s = mor__errf(c->err, c->err_n, MOR_E_FORMAT,
                          "tensor '%s': row length %llu is not a multiple of the %s block size %u",
                          t->name, (unsigned long long)t->dims[0], di.name, di.block);
            return s;
        }
        t->size = mor__dtype_size(t->type, t->n_elems);
        snprintf(what, sizeof what, "data offset of tensor '%s'", t->name);
        if ((s = rd_u64(c, &t->offset, what))) return s;
        if (t->offset % g->alignment) {
            s = mor__errf(c->err, c->err_n, MOR_E_FORMAT,
                          "tensor '%s': data offset %llu is not a multiple of the alignment %u",
                          t->name, (unsigned long long)t->offset, g->alignment);
            return s;
        }
        g->n_tensors = i + 1;
    }
    if (build_index(g, 1, n_tensors, &g->tensor_index, &dup))
        return mor__errf(c->err, c->err_n, MOR_E_NOMEM, "out of memory");
    if (dup != UINT64_MAX)
        return mor__errf(c->err, c->err_n, MOR_E_FORMAT, "duplicate tensor name '%s' at offset %llu",
                         g->tensors[dup].name, (unsigned long long)g->tensors[dup].info_offset);

    // Data section: after the header, padded to the alignment.
    uint64_t data = c->off, pad = (g->alignment - data % g->alignment) % g->alignment;
    if (mor__add_u64(data, pad, &data) || (n_tensors && data > c->size))
        return mor__errf(c->err, c->err_n, MOR_E_FORMAT,
                         "truncated file: the data section would start at %llu, past the end (%llu)",
                         (unsigned long long)data, (unsigned long long)c->size);
    g->data_offset = data;
    for (uint64_t i = 0; i < n_tensors; i++) {
        mor__gguf_tensor *t = &g->tensors[i];
        uint64_t start, end;
        if (mor__add_u64(data, t->offset, &start) || mor__add_u64(start, t->size, &end) ||
            end > c->size)
            return mor__errf(c->err, c->err_n, MOR_E_FORMAT,
                             "tensor '%s': data at offset %llu past the data section start %llu, "
                             "%llu bytes long, runs past the end of the file (%llu bytes)",
                             t->name, (unsigned long long)t->offset, (unsigned long long)data,
                             (unsigned long long)t->size, (unsigned long long)c->size);
        t->offset = start;
        t->data = c->p + start;
    }
    return MOR_OK;
}

int mor__gguf_parse(mor__gguf *g, const void *image, uint64_t size, char *err, size_t err_size) {
    return mor__gguf_parse_with(g, NULL, image, size, err, err_size);
}

int mor__gguf_parse_with(mor__gguf *g, const mor_allocator *alloc, const void *image, uint64_t size, char *err,
                         size_t err_size) {
    if (!g) return MOR_E_INVALID;
    memset(g, 0, sizeof *g);
    g->alloc = alloc;
    if (!image && size) return mor__errf(err, err_size, MOR_E_INVALID, "NULL image");
    cursor c = {image, size, 0, err, err_size};
    g->image = image;
    g->size = size;
    int s = parse(g, &c);
    if (s) mor__gguf_free(g);
    return s;
}

// ---- lookups -------------------------------------------------------------------------------

// O(log n): binary search of the sorted index built by the parser.
const mor__gguf_kv *mor__gguf_find_kv(const mor__gguf *g, const char *key) {
    if (!g->kv_index) return NULL;
    int64_t i = index_find(g, 0, g->kv_index, g->n_kv, key, strlen(key));
    return i < 0 ? NULL : &g->kv[i];
}

const mor__gguf_tensor *mor__gguf_find_tensor(const mor__gguf *g, const char *name) {
    if (!g->tensor_index) return NULL;
    int64_t i = index_find(g, 1, g->tensor_index, g->n_tensors, name, strlen(name));
    return i < 0 ? NULL : &g->tensors[i];
}

// Every GGUF integer of the library is decoded here (gguf.h).
int mor__gguf_decode_int(const uint8_t *p, uint32_t t, uint64_t *bits, int *is_signed) {
    int n, sg;
    switch (t) {
    case MOR__GGUF_UINT8: n = 1, sg = 0; break;
    case MOR__GGUF_INT8: n = 1, sg = 1; break;
    case MOR__GGUF_UINT16: n = 2, sg = 0; break;
    case MOR__GGUF_INT16: n = 2, sg = 1; break;
    case MOR__GGUF_UINT32: n = 4, sg = 0; break;
    case MOR__GGUF_INT32: n = 4, sg = 1; break;
    case MOR__GGUF_UINT64: n = 8, sg = 0; break;
    case MOR__GGUF_INT64: n = 8, sg = 1; break;
    default: return MOR_E_FORMAT;
    }
    uint64_t u = rd_le(p, n);
    if (sg && n < 8 && (u >> (8 * n - 1)) & 1) u |= ~0ull << (8 * n);
    *bits = u;
    if (is_signed) *is_signed = sg;
    return MOR_OK;
}

// Converts a scalar at p of type t (an integer or BOOL) to int64 (returns 0) or fails (returns
// 1, also for a UINT64 above INT64_MAX).
static int scalar_i64(const uint8_t *p, uint32_t t, int64_t *out) {
    if (t == MOR__GGUF_BOOL) {
        *out = p[0];
        return 0;
    }
    uint64_t u;
    int sg;
    if (mor__gguf_decode_int(p, t, &u, &sg) || (!sg && u > INT64_MAX)) return 1;
    *out = (int64_t)u;
    return 0;
}

static int scalar_f64(const uint8_t *p, uint32_t t, double *out) {
    if (t == MOR__GGUF_FLOAT32) {
        uint32_t u = (uint32_t)rd_le(p, 4);
        float f;
        memcpy(&f, &u, 4);
        *out = f;
        return 0;
    }
    if (t == MOR__GGUF_FLOAT64) {
        uint64_t u = rd_le(p, 8);
        memcpy(out, &u, 8);
        return 0;
    }
    int64_t i;
    if (scalar_i64(p, t, &i)) return 1;
    *out = (double)i;
    return 0;
}

int mor__gguf_get_u32(const mor__gguf *g, const char *key, uint32_t *out, char *err, size_t n) {
    const mor__gguf_kv *kv = mor__gguf_find_kv(g, key);
    if (!kv) return MOR_E_NOT_FOUND;
    int64_t v;
    if (kv->type == MOR__GGUF_BOOL || scalar_i64(kv->data, kv->type, &v))
        return mor__errf(err, n, MOR_E_FORMAT, "key '%s' has type %s, expected an integer", key,
                         vtype_name(kv->type));
    if (v < 0 || v > (int64_t)UINT32_MAX)
        return mor__errf(err, n, MOR_E_FORMAT, "key '%s' is %lld, outside 0..4294967295", key,
                         (long long)v);
    *out = (uint32_t)v;
    return MOR_OK;
}

int mor__gguf_get_f32(const mor__gguf *g, const char *key, float *out, char *err, size_t n) {
    const mor__gguf_kv *kv = mor__gguf_find_kv(g, key);
    if (!kv) return MOR_E_NOT_FOUND;
    double v;
    if (kv->type == MOR__GGUF_BOOL || scalar_f64(kv->data, kv->type, &v))
        return mor__errf(err, n, MOR_E_FORMAT, "key '%s' has type %s, expected a number", key,
                         vtype_name(kv->type));
    *out = (float)v;
    return MOR_OK;
}

int mor__gguf_get_bool(const mor__gguf *g, const char *key, int *out, char *err, size_t n) {
    const mor__gguf_kv *kv = mor__gguf_find_kv(g, key);
    if (!kv) return MOR_E_NOT_FOUND;
    if (kv->type != MOR__GGUF_BOOL)
        return mor__errf(err, n, MOR_E_FORMAT, "key '%s' has type %s, expected BOOL", key,
                         vtype_name(kv->type));
    *out = kv->data[0];
    return MOR_OK;
}

int mor__gguf_get_str(const mor__gguf *g, const char *key, mor__gguf_str *out, char *err, size_t n) {
    const mor__gguf_kv *kv = mor__gguf_find_kv(g, key);
    if (!kv) return MOR_E_NOT_FOUND;
    if (kv->type != MOR__GGUF_STRING)
        return mor__errf(err, n, MOR_E_FORMAT, "key '%s' has type %s, expected STRING", key,
                         vtype_name(kv->type));
    out->len = rd_le(kv->data, 8);
    out->ptr = (const char *)kv->data + 8;
    return MOR_OK;
}

int mor__gguf_get_cstr(const mor__gguf *g, const char *key, mor__gguf_str *out, char *err, size_t n) {
    int s = mor__gguf_get_str(g, key, out, err, n);
    if (s) return s;
    const char *nul = memchr(out->ptr, 0, (size_t)out->len);
    if (nul)
        return mor__errf(err, n, MOR_E_FORMAT,
                         "key '%s': the string value holds a NUL byte at position %llu of %llu", key,
                         (unsigned long long)(nul - out->ptr), (unsigned long long)out->len);
    return MOR_OK;
}

int mor__gguf_get_arr(const mor__gguf *g, const char *key, uint32_t *elem_type, uint64_t *n,
                      char *err, size_t err_n) {
    const mor__gguf_kv *kv = mor__gguf_find_kv(g, key);
    if (!kv) return MOR_E_NOT_FOUND;
    if (kv->type != MOR__GGUF_ARRAY)
        return mor__errf(err, err_n, MOR_E_FORMAT, "key '%s' has type %s, expected ARRAY", key,
                         vtype_name(kv->type));
    if (elem_type) *elem_type = kv->arr_type;
    if (n) *n = kv->arr_n;
    return MOR_OK;
}

// String arrays are walked from the start; callers that need random access build their own
// index once (the tokenizer does). Element i is found in O(i).
mor__gguf_str mor__gguf_arr_str(const mor__gguf *g, const mor__gguf_kv *kv, uint64_t i) {
    MOR__UNUSED(g);
    mor__gguf_str s = {NULL, 0};
    if (!kv || kv->type != MOR__GGUF_ARRAY || kv->arr_type != MOR__GGUF_STRING || i >= kv->arr_n)
        return s;
    const uint8_t *p = kv->data;
    for (uint64_t k = 0; k < i; k++) p += 8 + rd_le(p, 8);  // validated by the parser
    s.len = rd_le(p, 8);
    s.ptr = (const char *)p + 8;
    return s;
}

static int arr_numeric(const mor__gguf *g, const char *key, uint64_t n, const mor__gguf_kv **kvp,
                       char *err, size_t err_n) {
    const mor__gguf_kv *kv = mor__gguf_find_kv(g, key);
    if (!kv) return MOR_E_NOT_FOUND;
    if (kv->type != MOR__GGUF_ARRAY || !mor__gguf_vtype_size(kv->arr_type))
        return mor__errf(err, err_n, MOR_E_FORMAT, "key '%s' is not a numeric array", key);
    if (kv->arr_n != n)
        return mor__errf(err, err_n, MOR_E_FORMAT, "key '%s' has %llu elements, expected %llu", key,
                         (unsigned long long)kv->arr_n, (unsigned long long)n);
    *kvp = kv;
    return MOR_OK;
}

int mor__gguf_arr_f32(const mor__gguf *g, const char *key, float *out, uint64_t n, char *err,
                      size_t err_n) {
    const mor__gguf_kv *kv;
    int s = arr_numeric(g, key, n, &kv, err, err_n);
    if (s) return s;
    uint32_t es = mor__gguf_vtype_size(kv->arr_type);
    for (uint64_t i = 0; i < n; i++) {
        double v;
        if (kv->arr_type == MOR__GGUF_BOOL || scalar_f64(kv->data + i * es, kv->arr_type, &v))
            return mor__errf(err, err_n, MOR_E_FORMAT, "key '%s': elements of type %s are not numbers",
                             key, vtype_name(kv->arr_type));
        out[i] = (float)v;
    }
    return MOR_OK;
}

int mor__gguf_arr_i32(const mor__gguf *g, const char *key, int32_t *out, uint64_t n, char *err,
                      size_t err_n) {
    const mor__gguf_kv *kv;
    int s = arr_numeric(g, key, n, &kv, err, err_n);
    if (s) return s;
    uint32_t es = mor__gguf_vtype_size(kv->arr_type);
    for (uint64_t i = 0; i < n; i++) {
        int64_t v;
        if (scalar_i64(kv->data + i * es, kv->arr_type, &v))
            return mor__errf(err, err_n, MOR_E_FORMAT, "key '%s': elements of type %s are not integers",
                             key, vtype_name(kv->arr_type));
        if (v < INT32_MIN || v > INT32_MAX)
            return mor__errf(err, err_n, MOR_E_FORMAT, "key '%s': element %llu = %lld overflows int32",
                             key, (unsigned long long)i, (long long)v);
        out[i] = (int32_t)v;
    }
    return MOR_OK;
}
