// quantize.h: whole-file quantization (tools/mor-quantize): which type each tensor gets (the
// recipe) and the streaming GGUF rewrite. The block encoders are in quant.h.
//
// For architecture `llama` the output is meant to be byte-identical to llama.cpp's
// llama-quantize for the same input and type without an importance matrix: the same tensor
// order, per-tensor types, header keys and layout (docs/CONVERT.md, "mor-quantize"). Files of
// architecture `mor` follow the same rules with the choices documented there.
#ifndef MOR_QUANTIZE_H
#define MOR_QUANTIZE_H

#include "gguf.h"

#include <stdint.h>

// A quantization recipe: its name on the command line, the general.file_type it writes
// (llama.cpp's llama_ftype numbering) and the block type of most matrices (MOR__QT_*).
typedef struct {
    const char *name;
    uint32_t    ftype;
    uint32_t    base;
} mor__qrecipe;

// The recipe named `name` (case-insensitive: "Q4_K_M", "q4_k_m"), or NULL.
const mor__qrecipe *mor__qrecipe_find(const char *name);
// The names, comma-separated, for messages.
const char *mor__qrecipe_names(void);

// One output tensor, in output order.
typedef struct {
    uint32_t in;        // index in the input's tensor table
    uint32_t type;      // output GGUF type id
    uint32_t n_dims;    // as written: trailing dimensions of 1 dropped (at least 1)
    int      convert;   // 1: converted to `type`; 0: copied as it is
    int      fallback;  // 1: the row width forced a fallback type
    uint64_t size;      // output bytes
    uint64_t offset;    // from the start of the data section
} mor__qtensor;

typedef struct {
    const mor__qrecipe *recipe;
    uint64_t      n;          // tensors
    mor__qtensor *t;          // n entries, in output order (owned)
    uint32_t      alignment;
    uint64_t      data_size;  // bytes of the data section, padding included
} mor__qplan;

// Decides every output tensor's type and place for input `g` (parsed, its image borrowed).
// Returns MOR_OK, or MOR_E_UNSUPPORTED (architecture other than llama and mor, a tensor type
// that cannot be converted, a row width no type of the recipe fits), MOR_E_FORMAT (a llama
// file whose layer keys and tensors disagree), MOR_E_NOMEM; the message names the tensor or key.
int  mor__qplan_make(mor__qplan *p, const mor__gguf *g, const mor__qrecipe *r, char *err,
                     size_t err_n);
void mor__qplan_free(mor__qplan *p);

typedef struct {
    int   threads;  // worker threads for the conversion (1 or less: the calling thread only)
    int64_t piece_elems;  // elements converted at a time (whole rows, at least one); 0: 4 Mi
    // Called after each piece written: input bytes handled so far of `total`, tensors finished.
    void (*progress)(void *user, uint64_t done, uint64_t total, uint64_t tensors_done,
                     uint64_t n_tensors);
    void *user;
} mor__qopts;

typedef struct {
    uint64_t n_tensors, n_converted, n_fallback;
    uint64_t per_type[64];   // output tensors per GGUF type id
    uint64_t in_bytes, out_bytes;  // file sizes
    uint64_t buffer_bytes;   // working buffers allocated (the largest set at once)
    double   seconds;
} mor__qstats;

// Quantizes the GGUF file `in` to `out` with the recipe named `type`. The input is mapped and
// read tensor by tensor; each tensor is converted in pieces of at most 4 Mi elements, so
// memory holds the header, one piece in F32 and its output, not the model (pages of the input
// are released as they are consumed). The header is written first, then every tensor. On any
// error `out` is removed and a message names the file, the tensor or the key. Returns MOR_OK,
// MOR_E_INVALID (unknown type name, out the same file as in), MOR_E_IO (open, read or write
// failure, with the system's reason), MOR_E_FORMAT (a malformed input, a non-finite value, a
// value too large for the target type), MOR_E_UNSUPPORTED (see mor__qplan_make), MOR_E_NOMEM.
// `o` and `st` may be NULL.
int mor__quantize_file(const char *in, const char *out, const char *type, const mor__qopts *o,
                       mor__qstats *st, char *err, size_t err_n);

#endif
