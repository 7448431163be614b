// model.h: hyperparameters and weights of a loaded model (immutable after load).
//
// The model owns the file image (mmap or heap copy), the parsed GGUF view, small F32 copies of
// the 1-D tensors (norms, router biases) and the per-unrolled-layer table of weight views.
// Shared layers are referenced, never copied: every unrolled layer that maps to the same
// stored layer points at the same tensor data (see docs/FORMAT.md §3.2).
#ifndef MOR_MODEL_H
#define MOR_MODEL_H

#include <stdatomic.h>

#include "arch.h"
#include "gguf.h"
#include "internal.h"

// A weight matrix view: `rows` output rows of `cols` inputs, row-major, in the file's type.
typedef struct {
    const void *data;   // borrowed from the image; NULL when absent
    uint32_t    type;   // a type the kernels compute with (dtype.h)
    int64_t     rows;
    int64_t     cols;
} mor__mat;

enum { MOR__ROLE_Q, MOR__ROLE_K, MOR__ROLE_V, MOR__ROLE_O, MOR__ROLE_GATE, MOR__ROLE_UP,
       MOR__ROLE_DOWN, MOR__N_PROJ };

// Weights of one unrolled layer: views into the stored layer, with per-recursion overrides,
// LoRA pairs and the other relaxations of its (stored layer, recursion) resolved at load
// (docs/FORMAT.md §3.3). The relaxations are NULL / 0 when absent and then cost nothing.
typedef struct {
    mor__mat     w[MOR__N_PROJ];        // (rows = out, cols = in); shared with other layers
    mor__mat     lora_a[MOR__N_PROJ];   // (rank, in); data NULL when absent
    mor__mat     lora_b[MOR__N_PROJ];   // (out, rank)
    const float *dora[MOR__N_PROJ];     // (out) DoRA row scale m / |W + sigma B A|_row, or NULL:
                                        //   the projection is scale * (W x + sigma B (A x))
    const float *rec_enc;               // (d) recursion encoding: the layer's output stream times it
    const float *adapt_k;               // (adapt_len, n_head_kv * head_dim) adaption prompt keys
    const float *adapt_v;               //   and values: the layer's K and V projections of its prompt
    float        adapt_gate;            // the prompt's gate g (raw, no tanh)
    int32_t      adapt_len;             // prompt slots (0: no adaption prompt)
    const float *attn_norm;             // (d) F32
    const float *ffn_norm;              // (d) F32
    const float *bias[3];               // Q, K, V biases (F32, added after the projection) or NULL
    const float *attn_post_norm;        // (d) F32 norm of the attention output, or NULL
    const float *ffn_post_norm;         // (d) F32 norm of the MLP output, or NULL
    int32_t      window;                // sliding window: attends to positions > pos - window (0: all)
    int32_t      stored;                // s(l)
    int32_t      rec;                   // r(l): recursion index (0 outside the shared middle)
    int32_t      in_middle;             // 1 if the layer belongs to a recursion block
} mor__layer;

typedef struct {
    mor__mat     w1;                    // linear: (out, d); mlp: (2d, d)
    mor__mat     w2;                    // mlp only: (out, 2d)
} mor__router_w;

typedef struct {
    int32_t      after_layer;           // unrolled depth (1..L) whose output it reads
    const float *norm;                  // (d) F32 (the final norm when the file has none)
    mor__mat     out;                   // (V, d)
} mor__exit_head;

typedef struct {
    int32_t n_vocab, n_ctx_train, n_embd, n_ff, n_head, n_head_kv, head_dim;
    int32_t n_layer;       // unrolled depth L
    int32_t n_rec;         // N_r
    int32_t n_stored;      // stored layers
    int32_t block;         // B
    int32_t sharing;       // MOR_SHARING_*
    int32_t n_first;       // unique layers before the recursion blocks (1 for middle, else 0)
    int32_t rope_neox;     // 1: rotate half, 0: adjacent pairs
    int32_t kv_sharing;
    int32_t router;        // MOR_ROUTER_*
    int32_t router_mlp;    // 1: MLP router
    int32_t router_func;   // 0 none, 1 sigmoid, 2 tanh, 3 softmax
    int32_t router_additive;
    int32_t lora_rank;     // largest rank
    int32_t n_dora;        // projections of unrolled layers with a DoRA magnitude
    int32_t n_rec_enc;     // unrolled layers with a recursion encoding
    int32_t n_adapt;       // unrolled layers with an adaption prompt
    int32_t adapt_len;     // the longest adaption prompt (0: none); attention scratch holds it
    int32_t act;           // MLP activation MOR__ACT_* (arch.h)
    float   rms_eps, rope_theta, lora_scale, router_alpha, router_temp;
    float   attn_scale;    // multiplies q.k: 1/sqrt(head_dim) unless the architecture says otherwise
    float   attn_softcap;  // scores = cap * tanh(scores / cap) before the softmax; 0: none
    float   final_softcap; // the same on the logits of the output head; 0: none
    float   embd_scale;    // multiplies the embedding row (1: none)
    int32_t swa;           // sliding window of the layers that have one (arch.h), 0: none
} mor__hparams;

struct mor_model {
    mor_allocator      alloc;         // the model's memory, and its sessions' by default (alloc.h)
    _Atomic int32_t    refs;          // the owner's reference + one per session, scheduler, detok
    mor__hparams       hp;
    const mor__arch   *ar;            // the architecture's row (arch.h); NULL for a vocab-only load
    char               arch[16];
    char               sharing_name[24];
    char               router_name[8];
    char              *name;          // general.name (owned, NUL-terminated)
    int                vocab_only;
    // image
    void              *map;           // mmap base (NULL if heap)
    size_t             map_size;
    void              *heap;          // owned copy (NO_MMAP or COPY), else NULL
    mor__gguf          gguf;
    // weights
    mor__mat           tok_embd;      // (V, d)
    mor__mat           output;        // (V, d); tied: same data as tok_embd
    const float       *output_norm;   // (d)
    mor__layer        *layers;        // [n_layer]
    mor__router_w     *routers;       // expert: [n_rec]; token: [1]
    mor__router_w     *routers_aux;   // expert decision routers, or NULL
    float             *router_bias;   // token-choice selection bias [n_rec] or NULL
    mor__exit_head    *exits;
    int32_t            n_exits;
    // Depth steps (docs/POLICIES.md): recursions of a recursive model, or segments between
    // exit heads of a vanilla one. layer_step[l] is the step of unrolled layer l, -1 for the
    // unique first/last layers that every token runs. Steps are contiguous layer ranges
    // [step_begin, step_end) unless steps_interleaved (sequence sharing).
    int32_t            n_steps;
    int32_t           *layer_step;    // [n_layer]
    int32_t           *step_begin;    // [n_steps]
    int32_t           *step_end;      // [n_steps]
    int32_t           *step_exit;     // [n_steps] exit head read after the step, -1: final head
    int32_t            steps_interleaved;
    int32_t            has_last;      // a unique last layer runs after the steps (middle sharing)
    float             *f32_copies;    // backing store for the 1-D tensors above (owned)
    float             *relax;         // backing store of the DoRA scales and prompt K/V (owned)
    double            *rope_inv_freq; // [head_dim / 2]: theta^(-2i / head_dim), / rope_freqs[i], / linear factor
    uint64_t           n_params, n_params_unrolled, weight_bytes;
    // The vocabulary read from the same file, which the loader above the model (load.c)
    // attaches; NULL when the file has no tokenizer. Opaque here: the model only hands it back
    // to vocab_free when its last reference goes.
    void              *vocab;
    void             (*vocab_free)(void *vocab);
    // The default exit policy the file sets with mor.policy.* keys, checked and resolved
    // (exit.c); has_file_policy 0: the built-in default.
    mor_exit_policy    file_policy;
    int32_t            has_file_policy;
};

// Exit policies (exit.c). The largest budget window (the session's ring holds this many).
#define MOR__BUDGET_MAX_WINDOW 4096
// The model's default policy: the built-in one (ROUTER with a router, else FULL; KV SHARE for
// files trained with KV sharing, else SKIP), or the file's (mor.policy.* keys), resolved.
void mor__policy_default(const mor_model *m, mor_exit_policy *p);
// Validation of an exit policy for model m and a session with (has_router) or without a
// custom router and n_batch rows per step: resolves defaults (policy -1: the model's default
// policy; kv AUTO) into *out; the message goes to err. Returns MOR_OK, MOR_E_INVALID or
// MOR_E_UNSUPPORTED. The rules of mor_session_set_exit_policy, state loading and model loading.
int  mor__policy_check(const mor_model *m, const mor_exit_policy *q, int has_router, int32_t n_batch,
                       mor_exit_policy *out, char *err, size_t err_n);
// Reads the file's mor.policy.* keys into m->file_policy (after the hyperparameters and steps
// are known); MOR_E_FORMAT names the key on an unknown field, a value of another type or out
// of range, or a policy the rules refuse.
int  mor__policy_read_file(mor_model *m, char *err, size_t err_n);

// References held by the model's users (sessions, schedulers, detokenizers): the last unref
// frees the model (mor_model_free drops the owner's).
void mor__model_ref(const mor_model *m);
void mor__model_unref(const mor_model *m);

// Loading, in the steps that the loader above the model (load.c: mor_model_load and
// mor_model_load_memory) runs with the vocabulary read in between:
//   open_file / open_memory: read, map, borrow or copy the image into a new model and parse its
//     GGUF header, general.architecture and general.name. *out is the model or NULL on failure.
//   bind: read the hyperparameters and bind every tensor (nothing for a vocab-only load, which
//     open records in m->vocab_only). On failure the caller frees the model.
// out is not NULL; every failure returns a status with a message in err.
int mor__model_open_file(const char *path, const mor_model_params *params, mor_model **out, char *err,
                         size_t err_size);
int mor__model_open_memory(const void *data, size_t size, const mor_model_params *params, mor_model **out,
                           char *err, size_t err_size);
int mor__model_bind(mor_model *m, char *err, size_t err_n);

#endif
