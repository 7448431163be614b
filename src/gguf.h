// gguf.h: GGUF v3 reader (and a small writer for tools and tests).
//
// The reader parses and validates the whole header of a GGUF image held in memory (an
// mmap'd file or a caller buffer) before any tensor pointer is formed. It never asserts on
// input: every failure returns a negative mor status and writes a message naming the byte
// offset, key or tensor, and the expected and found values. The parsed view borrows the
// image; it does not copy tensor data. See docs/FORMAT.md §1.
#ifndef MOR_GGUF_H
#define MOR_GGUF_H

#include "dtype.h"
#include "mor.h"

#include <stddef.h>
#include <stdint.h>

#define MOR__GGUF_MAX_TENSORS 65536
#define MOR__GGUF_MAX_KV      65536
#define MOR__GGUF_MAX_NAME    64
#define MOR__GGUF_MAX_STRING  (16u << 20)
#define MOR__GGUF_MAX_ARRAY   (64u << 20)

enum mor__gguf_vtype {
    MOR__GGUF_UINT8 = 0, MOR__GGUF_INT8 = 1, MOR__GGUF_UINT16 = 2, MOR__GGUF_INT16 = 3,
    MOR__GGUF_UINT32 = 4, MOR__GGUF_INT32 = 5, MOR__GGUF_FLOAT32 = 6, MOR__GGUF_BOOL = 7,
    MOR__GGUF_STRING = 8, MOR__GGUF_ARRAY = 9, MOR__GGUF_UINT64 = 10, MOR__GGUF_INT64 = 11,
    MOR__GGUF_FLOAT64 = 12, MOR__GGUF_VTYPE_COUNT = 13
};

typedef struct {
    const char *ptr;   // not NUL-terminated; borrowed from the image
    uint64_t    len;
} mor__gguf_str;

typedef struct {
    mor__gguf_str key;
    uint32_t      type;       // enum mor__gguf_vtype
    uint32_t      arr_type;   // element type when type == ARRAY
    uint64_t      arr_n;      // element count when type == ARRAY
    const uint8_t *data;      // scalar bytes, string record (u64 len + bytes), or first array element
    uint64_t      offset;     // byte offset of the value in the image (for messages)
} mor__gguf_kv;

typedef struct {
    char          name[MOR__GGUF_MAX_NAME + 1];  // NUL-terminated copy
    uint32_t      n_dims;
    uint64_t      dims[4];    // innermost first; unused dims are 1
    uint32_t      type;       // GGUF type id, any GGUF defines (mor__dtype_name); dtype.h names those computed
    uint64_t      n_elems;
    uint64_t      size;       // bytes
    uint64_t      offset;     // absolute offset in the image
    const void   *data;       // image + offset
    uint64_t      info_offset; // byte offset of the tensor's info record (for messages)
} mor__gguf_tensor;

typedef struct mor__gguf {
    const uint8_t    *image;
    uint64_t          size;
    uint32_t          version;
    uint32_t          alignment;
    uint64_t          n_kv;
    mor__gguf_kv     *kv;       // owned
    uint64_t          n_tensors;
    mor__gguf_tensor *tensors;  // owned
    uint64_t          data_offset;
    uint32_t         *kv_index;      // owned: kv positions sorted by key (lookups)
    uint32_t         *tensor_index;  // owned: tensor positions sorted by name (lookups)
    const mor_allocator *alloc;      // where the owned arrays come from (NULL: libc)
} mor__gguf;

// Parse `image` (size bytes, borrowed; must outlive `g`). On error returns a negative
// status, writes a message to err (err_size bytes, may be 0) and leaves `g` empty (safe to
// pass to mor__gguf_free). Every tensor type GGUF defines is accepted here (sizes are known);
// the model loader decides which types it can compute with. Unknown type ids are MOR_E_FORMAT.
int  mor__gguf_parse(mor__gguf *g, const void *image, uint64_t size, char *err, size_t err_size);
// The same, with the owned arrays from `alloc` (borrowed: must outlive g).
int  mor__gguf_parse_with(mor__gguf *g, const mor_allocator *alloc, const void *image, uint64_t size, char *err,
                          size_t err_size);
void mor__gguf_free(mor__gguf *g);

// Lookups return NULL when absent. Each is O(log n): a binary search of an index sorted by
// name, built once by the parser (a merge sort: O(n log n) whatever the names), which also
// finds duplicate keys and tensor names. Loading is therefore O(n log n) in the number of
// records, never quadratic, however the file is crafted.
const mor__gguf_kv     *mor__gguf_find_kv(const mor__gguf *g, const char *key);
const mor__gguf_tensor *mor__gguf_find_tensor(const mor__gguf *g, const char *name);
// Name comparisons made so far by the calling thread (index builds and lookups): a
// deterministic measure of the parse and lookup work, for the tests.
uint64_t mor__gguf_name_compares(void);

// The one decoder of GGUF integers: the value at p (its bytes, little-endian) of value type t,
// UINT8 to INT64 (BOOL and the floats are not integers). MOR_OK with its 64 bits in *bits,
// sign-extended for the signed types and zero-extended for the unsigned ones, and *is_signed
// (may be NULL) tells which, so a caller reads *bits as int64_t or uint64_t; MOR_E_FORMAT,
// touching nothing, for another type. The getters below and every other reader of integer
// values (the tokenizer's special ids, mor_model_meta_str) go through it.
int mor__gguf_decode_int(const uint8_t *p, uint32_t t, uint64_t *bits, int *is_signed);

// Typed getters. Return MOR_OK, or MOR_E_FORMAT with a message naming the key when the value
// has the wrong type (integers of any width convert when the value fits). When the key is
// absent: return MOR_E_NOT_FOUND (callers turn that into a default or an error).
int mor__gguf_get_u32(const mor__gguf *g, const char *key, uint32_t *out, char *err, size_t n);
int mor__gguf_get_f32(const mor__gguf *g, const char *key, float *out, char *err, size_t n);
int mor__gguf_get_bool(const mor__gguf *g, const char *key, int *out, char *err, size_t n);
// String value: pointer into the image (not NUL-terminated) and length.
int mor__gguf_get_str(const mor__gguf *g, const char *key, mor__gguf_str *out, char *err, size_t n);
// The same for a value the caller will use as a C string: also MOR_E_FORMAT, naming the key,
// when the value holds a NUL byte (it would silently end the string there).
int mor__gguf_get_cstr(const mor__gguf *g, const char *key, mor__gguf_str *out, char *err, size_t n);
// Array accessors: element count and element type; element i of a string array.
int mor__gguf_get_arr(const mor__gguf *g, const char *key, uint32_t *elem_type, uint64_t *n,
                      char *err, size_t err_n);
// The i-th string of a string array (i < n, checked by the caller with mor__gguf_get_arr).
// Walks the array from its start: O(i). Callers needing every element build their own index.
mor__gguf_str mor__gguf_arr_str(const mor__gguf *g, const mor__gguf_kv *kv, uint64_t i);
// Elements of a numeric array converted to float / int32 (returns MOR_E_FORMAT on wrong type).
int mor__gguf_arr_f32(const mor__gguf *g, const char *key, float *out, uint64_t n, char *err, size_t err_n);
int mor__gguf_arr_i32(const mor__gguf *g, const char *key, int32_t *out, uint64_t n, char *err, size_t err_n);

// Bytes of a fixed-size value type (UINT8 .. FLOAT64, BOOL); 0 for STRING, ARRAY or unknown.
uint32_t    mor__gguf_vtype_size(uint32_t t);

const char *mor__dtype_name(uint32_t t);
// Bytes for n elements of type t (n a multiple of the block size), 0 on overflow/unknown.
uint64_t    mor__dtype_size(uint32_t t, uint64_t n);

#endif
