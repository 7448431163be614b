// gguf-write.c: GGUF v3 writer for the converters and the tests (see gguf.h, gguf-write.h).
//
// Keys are serialized as they are added, into one growing buffer. Tensors are kept as records
// (serialized info without the offset, plus a private copy of the data); the data layout is
// computed when the image is produced, so that a `general.alignment` key written at any point
// applies. Every append is all-or-nothing: a failed call leaves the writer as it was.
#include "gguf-write.h"
#include "internal.h"

#include <errno.h>
#include <stdio.h>

typedef struct {
    uint8_t *p;
    size_t   len, cap;
} buf;

typedef struct {
    uint8_t *info;      // name, n_dims, dims, type (the offset is appended at layout time)
    size_t   info_len;
    uint8_t *data;      // owned copy
    uint64_t size;
    uint64_t offset;    // MOR__GGUF_W_AUTO or a forced value
} wtensor;

struct mor__gguf_writer {
    buf      kv;
    uint64_t n_kv;
    wtensor *t;
    uint64_t n_t, cap_t;
    uint32_t alignment;
    uint32_t version;
};

// ---- byte buffer -----------------------------------------------------------------------------

static int buf_reserve(buf *b, size_t extra) {
    if (extra <= b->cap - b->len) return MOR_OK;
    if (extra > SIZE_MAX - b->len) return MOR_E_NOMEM;
    size_t need = b->len + extra, cap = b->cap ? b->cap : 256;
    while (cap < need) cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    uint8_t *p = realloc(b->p, cap);
    if (!p) return MOR_E_NOMEM;
    b->p = p;
    b->cap = cap;
    return MOR_OK;
}

// The put_* helpers assume the space was reserved.
static void put(buf *b, const void *p, size_t n) {
    if (n) memcpy(b->p + b->len, p, n);
    b->len += n;
}
static void put_le(buf *b, uint64_t v, int n) {
    for (int i = 0; i < n; i++) b->p[b->len++] = (uint8_t)(v >> (8 * i));
}

// Reads one host value of fixed-size type t at p as little-endian-ready bits.
static uint64_t host_bits(const void *p, uint32_t sz) {
    switch (sz) {
    case 1: { uint8_t v; memcpy(&v, p, 1); return v; }
    case 2: { uint16_t v; memcpy(&v, p, 2); return v; }
    case 4: { uint32_t v; memcpy(&v, p, 4); return v; }
    default: { uint64_t v; memcpy(&v, p, 8); return v; }
    }
}

// ---- create / free ---------------------------------------------------------------------------

mor__gguf_writer *mor__gguf_writer_create(void) {
    mor__gguf_writer *w = calloc(1, sizeof *w);
    if (!w) return NULL;
    w->alignment = 32;
    w->version = 3;
    return w;
}

void mor__gguf_writer_free(mor__gguf_writer *w) {
    if (!w) return;
    for (uint64_t i = 0; i < w->n_t; i++) {
        free(w->t[i].info);
        free(w->t[i].data);
    }
    free(w->t);
    free(w->kv.p);
    free(w);
}

void mor__gguf_w_set_version(mor__gguf_writer *w, uint32_t version) {
    if (w) w->version = version;
}
uint64_t mor__gguf_w_n_kv(const mor__gguf_writer *w) { return w ? w->n_kv : 0; }
uint64_t mor__gguf_w_n_tensors(const mor__gguf_writer *w) { return w ? w->n_t : 0; }

// ---- keys ------------------------------------------------------------------------------------

// Appends key string + type + `n` value bytes produced by `fill` (or copied from `value`).
static int kv_begin(mor__gguf_writer *w, const char *key, uint64_t key_len, uint32_t type,
                    size_t value_bytes) {
    if (!w || (!key && key_len)) return MOR_E_INVALID;
    if (key_len > SIZE_MAX - 12 || value_bytes > SIZE_MAX - 12 - key_len) return MOR_E_NOMEM;
    if (buf_reserve(&w->kv, 12 + (size_t)key_len + value_bytes)) return MOR_E_NOMEM;
    put_le(&w->kv, key_len, 8);
    put(&w->kv, key, (size_t)key_len);
    put_le(&w->kv, type, 4);
    return MOR_OK;
}

static int check_key(const mor__gguf_writer *w, const char *key) {
    return (!w || !key || !key[0]) ? MOR_E_INVALID : MOR_OK;
}

int mor__gguf_w_raw_kv(mor__gguf_writer *w, const char *key, uint64_t key_len, uint32_t type,
                       const void *value, size_t n) {
    if (n && !value) return MOR_E_INVALID;
    int s = kv_begin(w, key, key_len, type, n);
    if (s) return s;
    put(&w->kv, value, n);
    w->n_kv++;
    return MOR_OK;
}

int mor__gguf_w_val(mor__gguf_writer *w, const char *key, uint32_t type, const void *v) {
    uint32_t sz = mor__gguf_vtype_size(type);
    if (check_key(w, key) || !v || !sz) return MOR_E_INVALID;
    uint64_t bits = host_bits(v, sz);
    int s = kv_begin(w, key, strlen(key), type, sz);
    if (s) return s;
    put_le(&w->kv, bits, (int)sz);
    w->n_kv++;
    if (type == MOR__GGUF_UINT32 && strcmp(key, "general.alignment") == 0) {
        uint32_t a = (uint32_t)bits;
        if (a && !(a & (a - 1)) && a <= (1u << 20)) w->alignment = a;
    }
    return MOR_OK;
}

int mor__gguf_w_u32(mor__gguf_writer *w, const char *key, uint32_t v) {
    return mor__gguf_w_val(w, key, MOR__GGUF_UINT32, &v);
}
int mor__gguf_w_i32(mor__gguf_writer *w, const char *key, int32_t v) {
    return mor__gguf_w_val(w, key, MOR__GGUF_INT32, &v);
}
int mor__gguf_w_f32(mor__gguf_writer *w, const char *key, float v) {
    return mor__gguf_w_val(w, key, MOR__GGUF_FLOAT32, &v);
}
int mor__gguf_w_u64(mor__gguf_writer *w, const char *key, uint64_t v) {
    return mor__gguf_w_val(w, key, MOR__GGUF_UINT64, &v);
}
int mor__gguf_w_bool(mor__gguf_writer *w, const char *key, int v) {
    uint8_t b = v ? 1 : 0;
    return mor__gguf_w_val(w, key, MOR__GGUF_BOOL, &b);
}

int mor__gguf_w_str_n(mor__gguf_writer *w, const char *key, const char *v, uint64_t len) {
    if (check_key(w, key) || (!v && len)) return MOR_E_INVALID;
    if (len > SIZE_MAX - 8) return MOR_E_NOMEM;
    int s = kv_begin(w, key, strlen(key), MOR__GGUF_STRING, 8 + (size_t)len);
    if (s) return s;
    put_le(&w->kv, len, 8);
    put(&w->kv, v, (size_t)len);
    w->n_kv++;
    return MOR_OK;
}

int mor__gguf_w_str(mor__gguf_writer *w, const char *key, const char *v) {
    if (!v) return MOR_E_INVALID;
    return mor__gguf_w_str_n(w, key, v, strlen(v));
}

int mor__gguf_w_arr(mor__gguf_writer *w, const char *key, uint32_t elem_type, const void *v,
                    uint64_t n) {
    uint32_t sz = mor__gguf_vtype_size(elem_type);
    if (check_key(w, key) || !sz || (n && !v)) return MOR_E_INVALID;
    if (n > (SIZE_MAX - 12) / sz) return MOR_E_NOMEM;
    size_t bytes = (size_t)n * sz;
    int s = kv_begin(w, key, strlen(key), MOR__GGUF_ARRAY, 12 + bytes);
    if (s) return s;
    put_le(&w->kv, elem_type, 4);
    put_le(&w->kv, n, 8);
    const uint8_t *p = v;
    for (uint64_t i = 0; i < n; i++) put_le(&w->kv, host_bits(p + i * sz, sz), (int)sz);
    w->n_kv++;
    return MOR_OK;
}

int mor__gguf_w_arr_f32(mor__gguf_writer *w, const char *key, const float *v, uint64_t n) {
    return mor__gguf_w_arr(w, key, MOR__GGUF_FLOAT32, v, n);
}
int mor__gguf_w_arr_i32(mor__gguf_writer *w, const char *key, const int32_t *v, uint64_t n) {
    return mor__gguf_w_arr(w, key, MOR__GGUF_INT32, v, n);
}
int mor__gguf_w_arr_u32(mor__gguf_writer *w, const char *key, const uint32_t *v, uint64_t n) {
    return mor__gguf_w_arr(w, key, MOR__GGUF_UINT32, v, n);
}

int mor__gguf_w_arr_str(mor__gguf_writer *w, const char *key, const char *const *v,
                        const uint32_t *lens, uint64_t n) {
    if (check_key(w, key) || (n && !v)) return MOR_E_INVALID;
    size_t bytes = 12;
    for (uint64_t i = 0; i < n; i++) {
        if (!v[i] && (!lens || lens[i])) return MOR_E_INVALID;
        size_t len = lens ? lens[i] : strlen(v[i]);
        if (len > SIZE_MAX - 8 - bytes) return MOR_E_NOMEM;
        bytes += 8 + len;
    }
    int s = kv_begin(w, key, strlen(key), MOR__GGUF_ARRAY, bytes);
    if (s) return s;
    put_le(&w->kv, MOR__GGUF_STRING, 4);
    put_le(&w->kv, n, 8);
    for (uint64_t i = 0; i < n; i++) {
        size_t len = lens ? lens[i] : strlen(v[i]);
        put_le(&w->kv, len, 8);
        put(&w->kv, v[i], len);
    }
    w->n_kv++;
    return MOR_OK;
}

// ---- tensors ---------------------------------------------------------------------------------

int mor__gguf_w_raw_tensor(mor__gguf_writer *w, const char *name, uint64_t name_len,
                           uint32_t type, uint32_t n_dims, const uint64_t *dims, const void *data,
                           uint64_t size, uint64_t offset) {
    if (!w || (!name && name_len) || (n_dims && !dims) || (size && !data)) return MOR_E_INVALID;
    if (size > SIZE_MAX || name_len > SIZE_MAX / 2 || n_dims > (1u << 20)) return MOR_E_NOMEM;
    if (w->n_t == w->cap_t) {
        uint64_t cap = w->cap_t ? w->cap_t * 2 : 16;
        if (cap > SIZE_MAX / sizeof *w->t) return MOR_E_NOMEM;
        wtensor *t = realloc(w->t, (size_t)cap * sizeof *t);
        if (!t) return MOR_E_NOMEM;
        w->t = t;
        w->cap_t = cap;
    }
    buf info = {0};
    if (buf_reserve(&info, 8 + (size_t)name_len + 4 + 8 * (size_t)n_dims + 4)) return MOR_E_NOMEM;
    put_le(&info, name_len, 8);
    put(&info, name, (size_t)name_len);
    put_le(&info, n_dims, 4);
    for (uint32_t d = 0; d < n_dims; d++) put_le(&info, dims[d], 8);
    put_le(&info, type, 4);
    uint8_t *copy = malloc(size ? (size_t)size : 1);
    if (!copy) {
        free(info.p);
        return MOR_E_NOMEM;
    }
    if (size) memcpy(copy, data, (size_t)size);
    w->t[w->n_t++] = (wtensor){info.p, info.len, copy, size, offset};
    return MOR_OK;
}

int mor__gguf_w_tensor(mor__gguf_writer *w, const char *name, uint32_t type, uint32_t n_dims,
                       const uint64_t *dims, const void *data) {
    if (!w || !name || !dims || !data || n_dims < 1 || n_dims > 4) return MOR_E_INVALID;
    size_t name_len = strlen(name);
    if (name_len < 1 || name_len > MOR__GGUF_MAX_NAME) return MOR_E_INVALID;
    uint64_t n = 1;
    for (uint32_t d = 0; d < n_dims; d++)
        if (dims[d] == 0 || mor__mul_u64(n, dims[d], &n)) return MOR_E_INVALID;
    uint64_t size = mor__dtype_size(type, n);
    if (!size) return MOR_E_INVALID;  // unknown type or not a whole number of blocks
    return mor__gguf_w_raw_tensor(w, name, name_len, type, n_dims, dims, data, size,
                                  MOR__GGUF_W_AUTO);
}

// ---- layout and output -----------------------------------------------------------------------

static uint64_t pad_to(uint64_t x, uint32_t a) { return (a - x % a) % a; }

// Serializes everything before the data section (padding included) into `h` and returns the
// total image size in *total.
static int build_header(const mor__gguf_writer *w, buf *h, uint64_t *total) {
    size_t len = 24 + w->kv.len;
    for (uint64_t i = 0; i < w->n_t; i++) {
        if (w->t[i].info_len > SIZE_MAX - 8 - len) return MOR_E_NOMEM;
        len += w->t[i].info_len + 8;
    }
    // No tensors, no data section: nothing to pad (as llama.cpp's vocab-only files).
    uint64_t pad = w->n_t ? pad_to(len, w->alignment) : 0;
    if (len > SIZE_MAX - pad) return MOR_E_NOMEM;
    if (buf_reserve(h, len + (size_t)pad)) return MOR_E_NOMEM;
    put(h, "GGUF", 4);
    put_le(h, w->version, 4);
    put_le(h, w->n_t, 8);
    put_le(h, w->n_kv, 8);
    put(h, w->kv.p, w->kv.len);
    uint64_t off = 0;
    for (uint64_t i = 0; i < w->n_t; i++) {
        const wtensor *t = &w->t[i];
        put(h, t->info, t->info_len);
        put_le(h, t->offset == MOR__GGUF_W_AUTO ? off : t->offset, 8);
        uint64_t step = t->size + pad_to(t->size, w->alignment);
        if (mor__add_u64(off, step, &off)) return MOR_E_NOMEM;
    }
    memset(h->p + h->len, 0, (size_t)pad);
    h->len += (size_t)pad;
    if (mor__add_u64(h->len, off, total)) return MOR_E_NOMEM;
    return MOR_OK;
}

void *mor__gguf_writer_finish(mor__gguf_writer *w, uint64_t *size) {
    if (size) *size = 0;
    if (!w) return NULL;
    buf h = {0};
    uint64_t total;
    if (build_header(w, &h, &total) || total > SIZE_MAX) {
        free(h.p);
        return NULL;
    }
    uint8_t *img = malloc(total ? (size_t)total : 1);
    if (!img) {
        free(h.p);
        return NULL;
    }
    memcpy(img, h.p, h.len);
    size_t pos = h.len;
    free(h.p);
    for (uint64_t i = 0; i < w->n_t; i++) {
        const wtensor *t = &w->t[i];
        size_t pad = (size_t)pad_to(t->size, w->alignment);
        memcpy(img + pos, t->data, (size_t)t->size);
        memset(img + pos + t->size, 0, pad);
        pos += (size_t)t->size + pad;
    }
    if (size) *size = total;
    return img;
}

static int io_err(char *err, size_t err_n, const char *what, const char *path) {
    return mor__errf(err, err_n, MOR_E_IO, "%s '%s': %s", what, path, strerror(errno));
}

int mor__gguf_writer_save(mor__gguf_writer *w, const char *path, char *err, size_t err_n) {
    if (!w || !path) return mor__errf(err, err_n, MOR_E_INVALID, "NULL writer or path");
    buf h = {0};
    uint64_t total;
    if (build_header(w, &h, &total)) {
        free(h.p);
        return mor__errf(err, err_n, MOR_E_NOMEM, "out of memory building the GGUF header");
    }
    FILE *f = fopen(path, "wb");
    if (!f) {
        free(h.p);
        return io_err(err, err_n, "cannot create", path);
    }
    static const uint8_t zeros[64];
    int ok = fwrite(h.p, 1, h.len, f) == h.len;
    free(h.p);
    for (uint64_t i = 0; ok && i < w->n_t; i++) {
        const wtensor *t = &w->t[i];
        ok = fwrite(t->data, 1, (size_t)t->size, f) == t->size;
        for (uint64_t pad = pad_to(t->size, w->alignment); ok && pad;) {
            size_t k = pad < sizeof zeros ? (size_t)pad : sizeof zeros;
            ok = fwrite(zeros, 1, k, f) == k;
            pad -= k;
        }
    }
    if (!ok) {
        int s = io_err(err, err_n, "cannot write", path);
        fclose(f);
        return s;
    }
    if (fclose(f) != 0) return io_err(err, err_n, "cannot write", path);
    return MOR_OK;
}

int mor__gguf_w_write_file(const char *path, const void *data, uint64_t size, char *err,
                           size_t err_n) {
    if (!path || (!data && size)) return mor__errf(err, err_n, MOR_E_INVALID, "NULL path or data");
    FILE *f = fopen(path, "wb");
    if (!f) return io_err(err, err_n, "cannot create", path);
    if (size && fwrite(data, 1, (size_t)size, f) != size) {
        int s = io_err(err, err_n, "cannot write", path);
        fclose(f);
        return s;
    }
    if (fclose(f) != 0) return io_err(err, err_n, "cannot write", path);
    return MOR_OK;
}

int mor__gguf_w_read_file(const char *path, void **data, uint64_t *size, char *err, size_t err_n) {
    if (!path || !data || !size) return mor__errf(err, err_n, MOR_E_INVALID, "NULL argument");
    *data = NULL;
    *size = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return io_err(err, err_n, "cannot open", path);
    size_t cap = 1 << 16, len = 0;
    uint8_t *p = malloc(cap);
    while (p) {
        if (len == cap - 1) {
            uint8_t *q = cap > SIZE_MAX / 2 ? NULL : realloc(p, cap * 2);
            if (!q) {
                free(p);
                p = NULL;
                break;
            }
            p = q;
            cap *= 2;
        }
        size_t k = fread(p + len, 1, cap - 1 - len, f);
        len += k;
        if (k == 0) break;
    }
    if (!p) {
        fclose(f);
        return mor__errf(err, err_n, MOR_E_NOMEM, "out of memory reading '%s'", path);
    }
    if (ferror(f)) {
        int s = io_err(err, err_n, "cannot read", path);
        fclose(f);
        free(p);
        return s;
    }
    fclose(f);
    p[len] = 0;
    *data = p;
    *size = len;
    return MOR_OK;
}

// ---- copies -----------------------------------------------------------------------------------

static uint64_t rd_le64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

// Bytes of a key's value as stored after its type (arrays: from the first element). Nested
// arrays are refused (llama.cpp's writer has no way to copy them).
int mor__gguf_kv_value_bytes(const mor__gguf_kv *kv, uint64_t *n, char *err, size_t err_n) {
    uint32_t t = kv->type == MOR__GGUF_ARRAY ? kv->arr_type : kv->type;
    uint64_t count = kv->type == MOR__GGUF_ARRAY ? kv->arr_n : 1;
    if (t == MOR__GGUF_ARRAY)
        return mor__errf(err, err_n, MOR_E_UNSUPPORTED, "key '%.*s': nested arrays are not supported",
                         (int)(kv->key.len > 200 ? 200 : kv->key.len), kv->key.ptr);
    if (t == MOR__GGUF_STRING) {
        uint64_t off = 0;
        for (uint64_t i = 0; i < count; i++) off += 8 + rd_le64(kv->data + off);  // the parser checked the bounds
        *n = off;
        return MOR_OK;
    }
    *n = count * mor__gguf_vtype_size(t);
    return MOR_OK;
}

int mor__gguf_w_copy_kv(mor__gguf_writer *w, const mor__gguf_kv *kv, const char *key, char *err, size_t err_n) {
    const char *kp = key ? key : kv->key.ptr;
    uint64_t kn = key ? strlen(key) : kv->key.len;
    uint64_t vn = 0;
    int s = mor__gguf_kv_value_bytes(kv, &vn, err, err_n);
    if (s) return s;
    int arr = kv->type == MOR__GGUF_ARRAY;
    if (kn == 17 && !memcmp(kp, "general.alignment", 17) && kv->type == MOR__GGUF_UINT32) {
        s = mor__gguf_w_u32(w, "general.alignment", (uint32_t)(kv->data[0] | kv->data[1] << 8 | kv->data[2] << 16 | (uint32_t)kv->data[3] << 24));  // the writer's alignment too
    } else if ((s = kv_begin(w, kp, kn, kv->type, (size_t)vn + (arr ? 12 : 0))) == MOR_OK) {
        if (arr) {
            put_le(&w->kv, kv->arr_type, 4);
            put_le(&w->kv, kv->arr_n, 8);
        }
        put(&w->kv, kv->data, (size_t)vn);
        w->n_kv++;
    }
    if (s) return mor__errf(err, err_n, s, "copying key '%.*s': out of memory", (int)(kn > 200 ? 200 : kn), kp);
    return MOR_OK;
}

int mor__gguf_w_copy(mor__gguf_writer *w, const mor__gguf *g, const char *skip_prefix, char *err, size_t err_n) {
    size_t sp = skip_prefix ? strlen(skip_prefix) : 0;
    for (uint64_t i = 0; i < g->n_kv; i++) {
        const mor__gguf_kv *kv = &g->kv[i];
        if (sp && kv->key.len >= sp && memcmp(kv->key.ptr, skip_prefix, sp) == 0) continue;
        int s = mor__gguf_w_copy_kv(w, kv, NULL, err, err_n);
        if (s) return s;
    }
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const mor__gguf_tensor *t = &g->tensors[i];
        int s = mor__gguf_w_raw_tensor(w, t->name, strlen(t->name), t->type, t->n_dims, t->dims, t->data, t->size,
                                       MOR__GGUF_W_AUTO);
        if (s) return mor__errf(err, err_n, s, "copying tensor '%s': out of memory", t->name);
    }
    return MOR_OK;
}
