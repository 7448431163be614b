// gguf-write.h: the GGUF writer (tools/lib/gguf-write.c), for the converters and the tests;
// the library itself only reads GGUF (src/gguf.h).
//
// The writer builds GGUF v3 images. The typed calls validate their arguments; the others add
// file output, the remaining value types, and "raw" records that write exactly what they are given, so that
// tests can build deliberately malformed files (bad type ids, n_dims 0, misaligned offsets,
// BOOL 2, an overridden version...).
//
// Layout written by finish/save: magic "GGUF", version (3 unless overridden), tensor count,
// key count, the keys in call order, the tensor infos in call order, zero padding to the
// alignment, then each tensor's bytes at the next multiple of the alignment, zero-padded after
// each tensor (the last one included), as ggml does; a file without tensors ends after the
// keys (no padding). Tensor offsets are relative to the start of
// the data section. The alignment is 32 unless a power-of-two `general.alignment` UINT32 key is
// written (through mor__gguf_w_u32 or mor__gguf_w_val); the last such value wins. Integers and
// floats are written little-endian; tensor bytes are copied verbatim (little-endian hosts).
#ifndef MOR_GGUF_WRITE_H
#define MOR_GGUF_WRITE_H

#include "gguf.h"

// ---- the core calls ---------------------------------------------------------------------
// Builds a GGUF image in memory. Keys and tensors are appended in call order; tensor data is
// copied. mor__gguf_writer_finish() returns a malloc'd image (caller frees) or NULL on OOM.
typedef struct mor__gguf_writer mor__gguf_writer;
mor__gguf_writer *mor__gguf_writer_create(void);
void mor__gguf_writer_free(mor__gguf_writer *w);
int  mor__gguf_w_u32(mor__gguf_writer *w, const char *key, uint32_t v);
int  mor__gguf_w_i32(mor__gguf_writer *w, const char *key, int32_t v);
int  mor__gguf_w_f32(mor__gguf_writer *w, const char *key, float v);
int  mor__gguf_w_bool(mor__gguf_writer *w, const char *key, int v);
int  mor__gguf_w_str(mor__gguf_writer *w, const char *key, const char *v);
int  mor__gguf_w_arr_str(mor__gguf_writer *w, const char *key, const char *const *v, const uint32_t *lens, uint64_t n);
int  mor__gguf_w_arr_f32(mor__gguf_writer *w, const char *key, const float *v, uint64_t n);
int  mor__gguf_w_arr_i32(mor__gguf_writer *w, const char *key, const int32_t *v, uint64_t n);
int  mor__gguf_w_arr_u32(mor__gguf_writer *w, const char *key, const uint32_t *v, uint64_t n);
int  mor__gguf_w_tensor(mor__gguf_writer *w, const char *name, uint32_t type, uint32_t n_dims,
                        const uint64_t *dims, const void *data);
void *mor__gguf_writer_finish(mor__gguf_writer *w, uint64_t *size);


// An `offset` argument of mor__gguf_w_raw_tensor meaning "place the data normally".
#define MOR__GGUF_W_AUTO UINT64_MAX

// Scalar of any fixed-size type (UINT8..INT64, FLOAT32/64, BOOL): `v` points at a value of the
// matching C type (uint8_t, int8_t, ..., float, double; BOOL: uint8_t, written verbatim).
int mor__gguf_w_val(mor__gguf_writer *w, const char *key, uint32_t type, const void *v);
int mor__gguf_w_u64(mor__gguf_writer *w, const char *key, uint64_t v);
// String with an explicit length (may contain any bytes).
int mor__gguf_w_str_n(mor__gguf_writer *w, const char *key, const char *v, uint64_t len);
// Array of n fixed-size elements of elem_type, `v` holding n values of the matching C type.
int mor__gguf_w_arr(mor__gguf_writer *w, const char *key, uint32_t elem_type, const void *v,
                    uint64_t n);

// Raw key record: key (key_len bytes, any content), the uint32 `type` (any value), then
// `n` bytes of `value` verbatim. Nothing is checked.
int mor__gguf_w_raw_kv(mor__gguf_writer *w, const char *key, uint64_t key_len, uint32_t type,
                       const void *value, size_t n);
// Raw tensor record: name (name_len bytes), n_dims (any value; dims must hold n_dims values),
// type (any id), `size` bytes of data copied, and the recorded offset: MOR__GGUF_W_AUTO for the
// normal layout, else that value verbatim (the data is still placed at the normal position).
int mor__gguf_w_raw_tensor(mor__gguf_writer *w, const char *name, uint64_t name_len,
                           uint32_t type, uint32_t n_dims, const uint64_t *dims, const void *data,
                           uint64_t size, uint64_t offset);
// Header version to write (default 3).
void mor__gguf_w_set_version(mor__gguf_writer *w, uint32_t version);

// Bytes of a parsed key's value as stored after its type (arrays: from the first element).
// Nested arrays are refused (MOR_E_UNSUPPORTED, the key named).
int mor__gguf_kv_value_bytes(const mor__gguf_kv *kv, uint64_t *n, char *err, size_t err_n);
// Appends one key of a parsed file with its type and value bytes, under its own name (key NULL)
// or under `key` (a renamed copy: `llama.context_length` as `mor.context_length`). A UINT32
// general.alignment also sets the writer's alignment. MOR_OK, MOR_E_NOMEM or MOR_E_UNSUPPORTED.
int mor__gguf_w_copy_kv(mor__gguf_writer *w, const mor__gguf_kv *kv, const char *key, char *err, size_t err_n);
// Appends every key of a parsed file (in its order, except those whose name starts with
// skip_prefix, which may be NULL) and every tensor (in its order, bytes verbatim) to w. A
// UINT32 general.alignment is written through mor__gguf_w_u32, so the copy keeps the file's
// alignment. More keys may be added afterwards. MOR_OK, MOR_E_NOMEM or MOR_E_UNSUPPORTED.
int mor__gguf_w_copy(mor__gguf_writer *w, const mor__gguf *g, const char *skip_prefix, char *err, size_t err_n);

// Counts so far.
uint64_t mor__gguf_w_n_kv(const mor__gguf_writer *w);
uint64_t mor__gguf_w_n_tensors(const mor__gguf_writer *w);

// Writes the image to `path` (streamed: no second copy of the tensor data is made). Returns
// MOR_OK, MOR_E_IO (message names the path and the system error) or MOR_E_NOMEM.
int mor__gguf_writer_save(mor__gguf_writer *w, const char *path, char *err, size_t err_n);

// Helpers for tools and tests: write `size` bytes to `path`; read a whole file into a malloc'd
// buffer (one extra NUL byte appended, not counted in *size; free() it). MOR_E_IO names the
// path and the system error.
int mor__gguf_w_write_file(const char *path, const void *data, uint64_t size, char *err,
                           size_t err_n);
int mor__gguf_w_read_file(const char *path, void **data, uint64_t *size, char *err, size_t err_n);

#endif
