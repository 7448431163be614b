/* mor.h: adaptive-depth inference for small language models. MIT License. */
#ifndef MOR_H
#define MOR_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/*-************************************************************************************************
 *  Version
 **************************************************************************************************/
#define MOR_VERSION_MAJOR 0
#define MOR_VERSION_MINOR 5
#define MOR_VERSION_PATCH 0
#define MOR_VERSION_NUMBER (MOR_VERSION_MAJOR * 10000 + MOR_VERSION_MINOR * 100 + MOR_VERSION_PATCH)

#if defined(MOR_BUILD_SHARED) || defined(MOR_BUILD)
#  define MOR_API __attribute__((visibility("default")))
#else
#  define MOR_API
#endif

/* MOR_DEPRECATED(msg) marks a call that is kept, and exported, for existing callers but has a
 * replacement: gcc and clang warn where it is used (-Wdeprecated-declarations), other compilers
 * say nothing. A program that still calls one on purpose defines MOR_NO_DEPRECATION_WARNINGS
 * before including mor.h; the library's own build never warns. */
#if defined(MOR_BUILD_SHARED) || defined(MOR_BUILD) || defined(MOR_NO_DEPRECATION_WARNINGS)
#  define MOR_DEPRECATED(msg)
#elif defined(__GNUC__) || defined(__clang__)
#  define MOR_DEPRECATED(msg) __attribute__((deprecated(msg)))
#else
#  define MOR_DEPRECATED(msg)
#endif

/*-************************************************************************************************
 *  Status
 **************************************************************************************************/
/* Every fallible call returns a mor_status: 0 is success, negative values are errors.
 * Values are pinned: new codes are appended, none is ever renumbered. */
#define MOR_STATUS_MAP(XX)                                                                        \
    XX(OK,               0, "success")                                                             \
    XX(E_INVALID,       -1, "invalid argument")                                                    \
    XX(E_NOMEM,         -2, "out of memory")                                                       \
    XX(E_IO,            -3, "input/output error")                                                  \
    XX(E_FORMAT,        -4, "malformed model file")                                                \
    XX(E_UNSUPPORTED,   -5, "unsupported feature in model file")                                   \
    XX(E_NOT_FOUND,     -6, "not found")                                                           \
    XX(E_TOKEN,         -7, "token id out of range")                                               \
    XX(E_CONTEXT_FULL,  -8, "context window is full")                                              \
    XX(E_BUFFER_SMALL,  -9, "caller buffer too small")                                             \
    XX(E_STATE,        -10, "invalid session state data")                                          \
    XX(E_CALLBACK,     -11, "a callback reported an error")                                        \
    XX(E_CANCELLED,    -12, "operation cancelled")                                                 \
    XX(E_THREAD,       -13, "thread creation failed")                                              \
    XX(E_INTERNAL,     -14, "internal error")                                                    \
    XX(E_BUSY,         -15, "object is busy: call not allowed from its own callback")             \
    XX(E_ENCODING,     -16, "text holds a byte the vocabulary cannot encode")                     \
    XX(E_LIMIT,        -17, "a resource limit was exceeded")

typedef enum mor_status {
#define MOR__STATUS_ENUM(name, value, msg) MOR_##name = value,
    MOR_STATUS_MAP(MOR__STATUS_ENUM)
#undef MOR__STATUS_ENUM
    MOR_STATUS_MIN = -17
} mor_status;

/*-************************************************************************************************
 *  Overview
 **************************************************************************************************
 * mor runs small language models on a CPU with adaptive depth: a recursive model applies one
 * block of shared weights several times, and each token may stop early. It reads GGUF files
 * (architecture `llama`, or `mor` for recursive models; see docs/FORMAT.md).
 *
 * Objects:
 *   mor_model    immutable after load; share it freely between threads and sessions.
 *                Its sessions keep it alive (see mor_model_free).
 *   mor_session  one sequence: KV cache, logits, sampler state, exit policy. Use a session from
 *                one thread at a time (different sessions may run in parallel).
 *
 * Errors: every fallible call returns a mor_status (0 = MOR_OK, negative = error). Calls that
 * create an object take an optional `err` buffer that receives a message naming the problem;
 * calls on a session leave their message in mor_session_last_error(). The library never
 * aborts, exits or prints; logging goes to the callback set with mor_log_set().
 *
 * Example (greedy generation; error checks shortened):
 *
 *     #include <mor.h>
 *     #include <stdio.h>
 *
 *     int main(void) {
 *         char err[256];
 *         mor_model *model;
 *         mor_session *sess;
 *         if (mor_model_load("model.gguf", NULL, &model, err, sizeof err)) {
 *             fprintf(stderr, "%s\n", err);
 *             return 1;
 *         }
 *         mor_session_create(model, NULL, &sess, err, sizeof err);
 *         int32_t tok = mor_model_token_bos(model);
 *         for (int i = 0; i < 32; i++) {
 *             if (mor_session_step(sess, &tok, 1) != MOR_OK) break;
 *             mor_session_sample(sess, &tok);        // greedy unless a sampler is set
 *             printf("%d ", tok);
 *         }
 *         mor_session_free(sess);
 *         mor_model_free(model);
 *         return 0;
 *     }
 *
 * Parameter structs (mor_model_params, mor_session_params, mor_sampler_params,
 * mor_exit_policy) start with `size` and `kind` fields and are filled by their _init()
 * function; new fields are only ever appended, and the library reads no further than `size`,
 * so a program built against an older header keeps working. Bindings that cannot mirror C
 * structs (Python ctypes) allocate mor_params_size(kind) bytes, call mor_params_init() and set
 * fields by name with mor_params_set().
 */

/*-************************************************************************************************
 *  Version and status strings
 **************************************************************************************************/

/* mor_version(): the library version as "MAJOR.MINOR.PATCH". Static string. Thread-safe. */
MOR_API const char *mor_version(void);
/* mor_version_number(): MAJOR*10000 + MINOR*100 + PATCH of the library actually linked. */
MOR_API uint32_t    mor_version_number(void);
/* mor_status_name(): "MOR_E_FORMAT" for MOR_E_FORMAT; "MOR_E_UNKNOWN" for a value not in the
 * table. Static string. Thread-safe. */
MOR_API const char *mor_status_name(int status);
/* mor_status_str(): a short English description of a status. Static string. Thread-safe. */
MOR_API const char *mor_status_str(int status);

/*-************************************************************************************************
 *  Logging
 **************************************************************************************************/
#define MOR_LOG_ERROR 0
#define MOR_LOG_WARN  1
#define MOR_LOG_INFO  2
#define MOR_LOG_DEBUG 3

/* A log callback receives a level, a NUL-terminated message (borrowed, valid during the call)
 * and the user pointer given to mor_log_set(). It is called on the thread that triggered the
 * message, possibly on several threads at once. */
typedef void (*mor_log_fn)(int32_t level, const char *message, void *user_data);

/* mor_log_set(): install a process-wide log callback (NULL: silent, the default). Messages
 * above max_level are not formatted at all. Thread-safe; the callback and user_data must stay
 * valid until replaced. */
MOR_API void mor_log_set(mor_log_fn fn, void *user_data, int32_t max_level);

/*-************************************************************************************************
 *  Parameter structs
 **************************************************************************************************/
#define MOR_PARAMS_MODEL   1
#define MOR_PARAMS_SESSION 2
#define MOR_PARAMS_SAMPLER 3
#define MOR_PARAMS_EXIT    4

/* A host's allocator: a game or engine routes every allocation of a model, session or
 * scheduler through its own heaps. Set it in mor_model_params (all of the model's memory, and
 * by default that of its sessions, schedulers and tokenizer calls), or in mor_session_params /
 * mor_sched_params for one object. All fields zero (the default): the C library's allocator.
 *   alloc(user, size, alignment): `size` bytes (> 0) aligned to `alignment` (a power of two,
 *       at most 4096), or NULL: the call that needed the memory returns MOR_E_NOMEM and leaves
 *       every object as it was before the call.
 *   free(user, ptr): release a block from alloc (never NULL).
 * Tokenizer calls on a shared model may run on several threads at once, so a model's
 * allocator must be thread-safe if the host tokenizes from several threads. The file mapping,
 * compute threads' stacks and the C library's own buffers (stdio) are not allocated through
 * it. Blocks from one allocator are always returned to the same one. */
typedef struct mor_allocator {
    void *(*alloc)(void *user, size_t size, size_t alignment);
    void  (*free)(void *user, void *ptr);
    void   *user;
} mor_allocator;

/* Model load flags. */
#define MOR_MODEL_NO_MMAP    1u  /* read the file into memory instead of mapping it */
#define MOR_MODEL_VOCAB_ONLY 2u  /* load metadata and vocabulary only (no weights, no sessions) */
#define MOR_MODEL_COPY       4u  /* mor_model_load_memory(): copy the buffer (else borrowed) */

typedef struct mor_model_params {
    uint32_t size;   /* sizeof(mor_model_params) as compiled by the caller */
    uint32_t kind;   /* MOR_PARAMS_MODEL */
    uint32_t flags;  /* MOR_MODEL_* flags; default 0 */
    uint32_t reserved;
    /* appended in 0.3: */
    mor_allocator allocator; /* the model's memory, and its sessions' by default; zero: libc */
} mor_model_params;

/* Session flags. */
#define MOR_SESSION_LOGITS_ALL  1u /* keep the logits of every token of a step, not only the last */
#define MOR_SESSION_REF_KERNELS 2u /* use the scalar reference kernels (the test oracle), no SIMD */
#define MOR_SESSION_KV_F16      4u /* keep K/V in half precision: half the memory, logits move
                                      by about 1e-3 */

/* Session memory: what n_ctx = 0 means, and the cap on what one session may reserve unless
 * mor_session_params.max_bytes says otherwise (see mor_session_memory_size()). */
#define MOR_SESSION_DEFAULT_CTX       4096
#define MOR_SESSION_DEFAULT_MAX_BYTES (1ll << 30)

typedef struct mor_session_params {
    uint32_t size;      /* sizeof(mor_session_params) */
    uint32_t kind;      /* MOR_PARAMS_SESSION */
    int32_t  n_ctx;     /* context length in tokens, 1 .. 2^20; 0 = the smaller of the model's
                           trained context and MOR_SESSION_DEFAULT_CTX (4096). Default 0 */
    int32_t  n_batch;   /* most tokens computed in one pass of a prompt; default 64 */
    int32_t  n_threads; /* worker threads for this session (1 = caller's thread only); default 1 */
    uint32_t flags;     /* MOR_SESSION_* flags; default 0 */
    /* appended in 0.3: */
    int64_t  max_bytes; /* most bytes the session may allocate (mor_session_memory_size());
                           0 = the default cap: the larger of MOR_SESSION_DEFAULT_MAX_BYTES (1 GiB)
                           and the model's weight bytes; -1 = no cap. Default 0 */
    mor_allocator allocator; /* the session's memory; zero: the model's allocator */
} mor_session_params;

typedef struct mor_sampler_params {
    uint32_t size;           /* sizeof(mor_sampler_params) */
    uint32_t kind;           /* MOR_PARAMS_SAMPLER */
    float    temperature;    /* <= 0: greedy (argmax). Default 0 */
    int32_t  top_k;          /* keep the k most likely tokens; <= 0: all. Default 40 */
    float    top_p;          /* nucleus: keep the smallest set with mass >= top_p; 1 = off. Default 0.95 */
    float    min_p;          /* drop tokens below min_p * p(top); 0 = off. Default 0.05 */
    float    repeat_penalty; /* divide positive (multiply negative) logits of recent tokens; 1 = off */
    int32_t  repeat_last_n;  /* how many recent tokens the penalty looks at. Default 64 */
    uint64_t seed;           /* RNG seed; the same seed gives the same tokens. Default 0x5eed */
} mor_sampler_params;

/* Exit policies: how many depth steps each token runs. A step is one recursion of a recursive
 * model, or one segment between exit heads of a vanilla model (docs/POLICIES.md). */
#define MOR_EXIT_FULL       0 /* every token runs every step (a router still gates, see docs) */
#define MOR_EXIT_FIXED      1 /* every token runs steps 0 .. depth-1 */
#define MOR_EXIT_ROUTER     2 /* the model's router: expert-choice continues while sigmoid(z) >= threshold
                                 (causal), token-choice takes the argmax depth */
#define MOR_EXIT_CAPACITY   3 /* expert-choice top-k per step over the tokens of one pass (non-causal;
                                 reproduces the official scoring): k_r = max(1, (N_r - r) * T / N_r) */
#define MOR_EXIT_CONFIDENCE 4 /* exit after a step when the exit head's confidence > threshold (CALM) */
#define MOR_EXIT_SATURATION 5 /* exit when cos(h after step, h before step) >= threshold */
#define MOR_EXIT_FREE       6 /* one shallow exit after `shallow` steps (confidence > threshold, or a
                                 threshold learned online with a Beta mixture); else full depth */
#define MOR_EXIT_CUSTOM     7 /* a router set with mor_session_set_router() decides */

/* Confidence measures (MOR_EXIT_CONFIDENCE, MOR_EXIT_FREE), all in [0, 1]. */
#define MOR_CONF_TOP2_GAP 0 /* p(top1) - p(top2) */
#define MOR_CONF_MAX_PROB 1 /* p(top1) */
#define MOR_CONF_ENTROPY  2 /* 1 - H(p) / ln(V) */

/* KV strategies for the layers a token skips. */
#define MOR_KV_AUTO      0 /* SHARE for models trained with KV sharing, else SKIP */
#define MOR_KV_SKIP      1 /* recursion-wise caching: skipped layers hold no entry for the token */
#define MOR_KV_SHARE     2 /* recursive KV sharing: deeper recursions attend to recursion-0 K/V */
#define MOR_KV_PROPAGATE 3 /* CALM state propagation: skipped layers get K/V from the exit state */
#define MOR_KV_SYNC      4 /* FREE synchronized parallel decoding: exited tokens are stacked and run
                              through the deep layers with the next token that goes deep */

typedef struct mor_exit_policy {
    uint32_t size;          /* sizeof(mor_exit_policy) */
    uint32_t kind;          /* MOR_PARAMS_EXIT */
    int32_t  policy;        /* MOR_EXIT_*; default: ROUTER for models with a router, else FULL */
    int32_t  depth;         /* FIXED: steps to run, 1 .. mor_model_get_int(MOR_INFO_N_STEPS) */
    float    threshold;     /* ROUTER (expert), CONFIDENCE, SATURATION, FREE; in [0, 1]; 0.5 */
    int32_t  min_depth;     /* steps every token runs before any exit; default 0 (ROUTER) or 1 */
    /* appended in 0.1: */
    int32_t  metric;        /* MOR_CONF_*; default TOP2_GAP */
    float    decay_tau;     /* CONFIDENCE: CALM threshold decay over positions (0 = constant):
                               lambda_t = 0.9 * lambda + 0.1 * lambda * exp(-tau * t / decay_len) */
    int32_t  decay_len;     /* CONFIDENCE: N in the decay; 0 = the session's n_ctx */
    int32_t  shallow;       /* FREE: steps run before the shallow exit check; default 1 */
    int32_t  adaptive;      /* FREE: 1 = learn the threshold online (Beta mixture); default 0 */
    int32_t  kv;            /* MOR_KV_*; default AUTO (SYNC for FREE) */
    float    budget;        /* cap on the mean depth (steps) over the last budget_window tokens;
                               0 = no cap */
    int32_t  budget_window; /* default 32 */
    float    rollback;      /* KV_SYNC: after a deep pass, roll back to the first stacked token whose
                               emitted successor has a deep cross-entropy above this; 0 = off */
} mor_exit_policy;

/* Fill a params struct with its defaults (sets size and kind). NULL is ignored. */
MOR_API void mor_model_params_init(mor_model_params *p);
MOR_API void mor_session_params_init(mor_session_params *p);
MOR_API void mor_sampler_params_init(mor_sampler_params *p);
MOR_API void mor_exit_policy_init(mor_exit_policy *p);

/* Generic access for bindings. mor_params_size(kind): bytes to allocate (0: unknown kind).
 * mor_params_init(p, kind): defaults. mor_params_set(p, "field", value) and mor_params_get():
 * set / read a field by its name in the struct of that kind (MOR_PARAMS_MODEL .. EXIT above,
 * MOR_PARAMS_SCHED below; integers must be exact in a double).
 * @return MOR_OK, MOR_E_NOT_FOUND (no such field) or MOR_E_INVALID (NULL, bad kind, value out
 * of range for the field's type). Thread-safe on distinct structs. */
MOR_API size_t mor_params_size(uint32_t kind);
MOR_API int    mor_params_init(void *p, uint32_t kind);
MOR_API int    mor_params_set(void *p, const char *field, double value);
MOR_API int    mor_params_get(const void *p, const char *field, double *value);

/*-************************************************************************************************
 *  Model
 **************************************************************************************************/
typedef struct mor_model mor_model;

/* mor_model_load(): open a GGUF file (mapped read-only unless MOR_MODEL_NO_MMAP) and build a
 * model. params may be NULL (defaults). err (err_size bytes, may be NULL/0) receives a message
 * naming the problem on failure. Weights are read in place, so every tensor the model uses
 * must start at an address its type allows (F32: a multiple of 4; F16, BF16 and the quantized
 * types: of 2); GGUF's default alignment (32) guarantees it, a file written with general.alignment 1 or
 * 2 may not. The token list (tokenizer.ggml.tokens), when present, must have exactly as many
 * tokens as token_embd.weight and the output heads have rows. Metadata strings used as names
 * (general.architecture, general.name, the mor.* names, tokenizer.ggml.model and .pre) must
 * not hold a NUL byte. Loading takes O(n log n) time in the number of keys and tensors.
 * @return MOR_OK and *out set (caller owns; free with mor_model_free), or an error with *out =
 * NULL: MOR_E_IO (cannot open/read), MOR_E_FORMAT (malformed: offset, key or tensor named;
 * a token count that differs from the embedding rows, both counts named; a name string with
 * a NUL, the key named; a mor.policy.* key that names no field of mor_exit_policy, holds no
 * number, or sets a policy mor_session_set_exit_policy() would refuse, the key named), MOR_E_UNSUPPORTED (valid GGUF this library cannot run: architecture,
 * tensor type, version, a tensor not aligned for its type, named with the file's alignment),
 * MOR_E_NOMEM, MOR_E_INVALID (NULL path or out). Thread-safe. */
MOR_API int mor_model_load(const char *path, const mor_model_params *params, mor_model **out,
                           char *err, size_t err_size);

/* mor_model_load_memory(): the same from a GGUF image in memory. Without MOR_MODEL_COPY the
 * buffer is borrowed and must stay valid and unchanged until mor_model_free(). A buffer whose
 * address is not a multiple of 4 would misalign every tensor: it is copied as with
 * MOR_MODEL_COPY instead of borrowed (logged at MOR_LOG_INFO), so pass a buffer aligned to 4
 * (malloc's, or better 32 like the file's own alignment) to load without a copy. Tensors that
 * the file itself misaligns are refused as by mor_model_load(), whatever the buffer. */
MOR_API int mor_model_load_memory(const void *data, size_t size, const mor_model_params *params,
                                  mor_model **out, char *err, size_t err_size);

/* mor_model_free(): release the caller's hold on a model. NULL is a no-op. Sessions,
 * schedulers and streaming detokenizers of the model hold it too: freed while some of them
 * exist (a warning is logged), the model and its mapping are released with the last of them,
 * so no object is left pointing at freed memory. Thread-safe; call it once per load. */
MOR_API void mor_model_free(mor_model *model);

/* Integer model facts for mor_model_get_int(). */
#define MOR_INFO_N_VOCAB          0  /* vocabulary size */
#define MOR_INFO_N_CTX_TRAIN      1  /* trained context length */
#define MOR_INFO_N_EMBD           2  /* hidden size d */
#define MOR_INFO_N_FF             3  /* feed-forward size */
#define MOR_INFO_N_HEAD           4  /* query heads */
#define MOR_INFO_N_HEAD_KV        5  /* key/value heads */
#define MOR_INFO_HEAD_DIM         6  /* head size */
#define MOR_INFO_N_LAYER          7  /* unrolled depth L */
#define MOR_INFO_N_RECURSION      8  /* recursions N_r (1 for a vanilla model) */
#define MOR_INFO_N_STORED_LAYER   9  /* layers stored in the file (shared ones once) */
#define MOR_INFO_BLOCK_SIZE      10  /* layers per recursion block B */
#define MOR_INFO_SHARING         11  /* MOR_SHARING_* */
#define MOR_INFO_ROUTER          12  /* MOR_ROUTER_* */
#define MOR_INFO_KV_SHARING      13  /* 1 if deeper recursions reuse recursion-0 KV */
#define MOR_INFO_LORA_RANK       14  /* largest LoRA rank (0: none) */
#define MOR_INFO_N_EXIT_HEADS    15  /* exit heads */
#define MOR_INFO_N_PARAMS        16  /* parameters stored (shared weights counted once) */
#define MOR_INFO_N_PARAMS_UNROLLED 17 /* parameters of the equivalent unrolled model */
#define MOR_INFO_ROPE_TYPE       18  /* 0: adjacent pairs, 1: neox (rotate half) */
#define MOR_INFO_WEIGHT_BYTES    19  /* bytes of tensor data */
#define MOR_INFO_VOCAB_ONLY      20  /* 1 if loaded with MOR_MODEL_VOCAB_ONLY */
#define MOR_INFO_N_STEPS         21  /* depth steps a token may run: recursions, or segments
                                        between exit heads of a vanilla model */
#define MOR_INFO_N_DORA          22  /* projections with a DoRA magnitude, over unrolled layers */
#define MOR_INFO_N_REC_ENC       23  /* unrolled layers with a recursion encoding */
#define MOR_INFO_N_ADAPT         24  /* unrolled layers with an adaption prompt */
#define MOR_INFO_ADAPT_LEN       25  /* slots of the longest adaption prompt (0: none) */
/* Float model facts for mor_model_get_float(). */
#define MOR_INFO_RMS_EPS        100
#define MOR_INFO_ROPE_THETA     101
#define MOR_INFO_LORA_SCALE     102
#define MOR_INFO_ROUTER_ALPHA   103
/* String model facts for mor_model_get_str(). */
#define MOR_INFO_ARCH           200  /* "llama" or "mor" */
#define MOR_INFO_SHARING_NAME   201  /* "none", "cycle", "sequence", "middle_cycle", "middle_sequence" */
#define MOR_INFO_ROUTER_NAME    202  /* "none", "expert", "token" */
#define MOR_INFO_NAME           203  /* general.name, or "" */

#define MOR_SHARING_NONE            0
#define MOR_SHARING_CYCLE           1
#define MOR_SHARING_SEQUENCE        2
#define MOR_SHARING_MIDDLE_CYCLE    3
#define MOR_SHARING_MIDDLE_SEQUENCE 4

#define MOR_ROUTER_NONE   0
#define MOR_ROUTER_EXPERT 1
#define MOR_ROUTER_TOKEN  2

/* mor_model_get_int() / _float() / _str(): model facts by MOR_INFO_* key. An unknown key or a
 * NULL model gives -1 / NAN / NULL. Strings are owned by the model. Thread-safe. */
MOR_API int64_t     mor_model_get_int(const mor_model *model, int32_t key);
MOR_API double      mor_model_get_float(const mor_model *model, int32_t key);
MOR_API const char *mor_model_get_str(const mor_model *model, int32_t key);

/* mor_model_meta_str(): the GGUF metadata value of `key` rendered as text (numbers in decimal,
 * strings as is, arrays as "[n items]") into buf (NUL-terminated). *n_bytes receives the
 * length without the NUL. @return MOR_OK, MOR_E_NOT_FOUND, MOR_E_BUFFER_SMALL (*n_bytes = the
 * length needed, without the NUL), MOR_E_INVALID. Thread-safe. */
MOR_API int mor_model_meta_str(const mor_model *model, const char *key, char *buf, size_t capacity,
                               size_t *n_bytes);

/*-************************************************************************************************
 *  Session
 **************************************************************************************************/
typedef struct mor_session mor_session;

/* mor_session_create(): a session with its own KV cache (n_ctx tokens, one slot per unrolled
 * layer) and work buffers, allocated once here. params may be NULL: a context of at most 4096
 * tokens and a cap of 1 GiB (or the model's weight bytes if larger) on its memory. @return
 * MOR_OK and *out (caller owns; mor_session_free), or MOR_E_INVALID (NULL, vocab-only model, bad
 * parameter: named in err), MOR_E_LIMIT (the session would need more than its cap: the message
 * gives both figures; nothing was allocated), MOR_E_NOMEM. Thread-safe with respect to the
 * model. */
MOR_API int  mor_session_create(const mor_model *model, const mor_session_params *params,
                                mor_session **out, char *err, size_t err_size);
/* mor_session_memory_size(): the bytes a session created with these params (NULL: defaults)
 * would allocate, without creating it: KV cache, work buffers, logits and telemetry, each
 * rounded up to whole 64-byte lines, plus the session object and its thread pool's bookkeeping
 * aside (compute threads' stacks are not counted; a confidence policy later adds room for up to
 * 7 more rows of logits, see docs/POLICIES.md). mor_session_create() refuses a session whose size exceeds its cap (max_bytes).
 * K/V memory is reserved, not touched: pages of a context never filled are never made resident
 * on systems that commit memory lazily. @return MOR_OK and *bytes; MOR_E_INVALID (a parameter,
 * named in err); MOR_E_LIMIT (the size overflows). Thread-safe. */
MOR_API int  mor_session_memory_size(const mor_model *model, const mor_session_params *params,
                                     uint64_t *bytes, char *err, size_t err_size);
/* mor_session_free(): NULL is a no-op. */
MOR_API void mor_session_free(mor_session *session);

/* mor_session_last_error(): the message of the last failed call on this session ("" if none).
 * Borrowed: valid until the next call on the session. */
MOR_API const char *mor_session_last_error(const mor_session *session);

/* mor_session_step(): append n_tokens tokens at the end of the sequence and run the model on
 * them (a prompt is computed in batches of n_batch). Afterwards the logits of the last token
 * (of every token with MOR_SESSION_LOGITS_ALL) and the depth each token took are available.
 * @return MOR_OK; MOR_E_TOKEN (an id outside the vocabulary: nothing changed);
 * MOR_E_CONTEXT_FULL (the tokens do not fit in n_ctx: nothing changed, rewind or reset to go
 * on); MOR_E_INVALID (NULL tokens, n_tokens < 1, or more than n_batch tokens with LOGITS_ALL).
 * Not thread-safe on one session. */
MOR_API int mor_session_step(mor_session *session, const int32_t *tokens, int32_t n_tokens);

/* Bounding and cancelling one step. An abort callback receives the progress of the
 * mor_session_step() call running it: n_done tokens of the call's n_total are accepted so far,
 * and the pass over the next tokens is about to run unrolled layer `layer` of n_layer (0: the
 * pass has not started). It is called before every layer of every pass (a prompt runs in
 * passes of n_batch tokens; KV_SYNC runs one token per pass), on the thread that called
 * mor_session_step(). Return 0 to go on, anything else to stop. It may read the session (see
 * the callback rules under mor_route_fn: changing calls are refused with MOR_E_BUSY).
 *
 * A stopped step returns MOR_E_CANCELLED (the message gives n_done and n_total) and leaves the
 * session exactly as if mor_session_step(session, tokens, n_done) had been called: the first
 * n_done tokens are in the sequence (n_past grew by n_done) with their K/V, logits and depths;
 * the pass that was stopped between layers is dropped whole (its K/V entries go). With
 * n_done = 0 the session is as before the call, the previous step's logits included. To
 * resume, step the rest: mor_session_step(session, tokens + n_done, n_total - n_done); the
 * logits are then bit-identical to those of an uncancelled step, because passes stop only at
 * n_batch boundaries of the call (n_done is a multiple of n_batch, or of 1 under KV_SYNC).
 * n_done is the callback's last argument, or the growth of mor_session_n_past().
 *
 * To bound one call to K prompt tokens, return non-zero when n_done >= K and layer == 0 (with
 * n_batch a divisor of K); to bound its time, compare a clock at every call. A custom router
 * that saw a dropped pass is not told (its reset is not called). Scheduled sessions
 * (mor_sched_*) do not call it: cancel there with mor_sched_cancel(). */
typedef int32_t (*mor_abort_fn)(void *user, int32_t n_done, int32_t n_total, int32_t layer, int32_t n_layer);

/* mor_session_set_abort(): install the abort callback (NULL: none, the default); user is
 * borrowed until replaced or the session is freed. @return MOR_OK, MOR_E_INVALID (NULL session),
 * MOR_E_BUSY (called from a callback of the session). */
MOR_API int mor_session_set_abort(mor_session *session, mor_abort_fn fn, void *user);

/* mor_session_logits(): logits (n_vocab floats) of token i of the last step; i = -1 is the last
 * token. NULL if i is out of range or that token's logits were not kept. Borrowed: valid until
 * the next step, rewind, reset or state load. */
MOR_API const float *mor_session_logits(const mor_session *session, int32_t i);

/* mor_session_depth(): recursions that token i of the last step ran (-1 = last token); for a
 * vanilla model, 1. -1 if i is out of range. */
MOR_API int32_t mor_session_depth(const mor_session *session, int32_t i);

/* mor_session_token_at(): the token id at absolute position pos (< n_past) of the sequence.
 * @return MOR_OK or MOR_E_INVALID. */
MOR_API int mor_session_token_at(const mor_session *session, int32_t pos, int32_t *token);

/* mor_session_model(): the model the session runs (NULL for a NULL session). */
MOR_API const mor_model *mor_session_model(const mor_session *session);

/* Counters: tokens in the sequence, the context size, tokens in the last step. */
MOR_API int32_t mor_session_n_past(const mor_session *session);
MOR_API int32_t mor_session_n_ctx(const mor_session *session);
MOR_API int32_t mor_session_n_last(const mor_session *session);

/* mor_session_rewind(): keep the first n_keep tokens (0 <= n_keep <= n_past) and drop the rest
 * from the KV cache, so the sequence can continue from there. Logits of the last step are
 * dropped. @return MOR_OK or MOR_E_INVALID. */
MOR_API int  mor_session_rewind(mor_session *session, int32_t n_keep);
/* mor_session_reset(): forget the whole sequence (same as rewind to 0); the sampler RNG is
 * re-seeded from its seed. */
MOR_API void mor_session_reset(mor_session *session);

/* Session state: the tokens, the KV cache, the sampler settings and RNG and the exit policy, in
 * a versioned little-endian byte format (version 4) tied to the model it was saved from.
 * A state carries a fingerprint of its model: the architecture, the hyperparameters, the
 * sharing map (which stored layer and recursion each unrolled layer is) and the tensor table
 * (names, types and shapes, in any order). The weight values are not part of it: a state of one
 * model loads into another file with the same layout and different weights (a fine-tune).
 * mor_session_state_size(): exact bytes mor_session_state_save() writes now.
 * mor_session_state_save(): @return MOR_OK, MOR_E_BUFFER_SMALL (*n_written = bytes needed).
 * mor_session_state_load(): restore into a session of the same model (n_ctx may differ if the
 * tokens fit). The saved sampler settings and exit policy must pass the checks of
 * mor_session_set_sampler() and mor_session_set_exit_policy() (the KV strategy may differ from
 * the session's); the policy is then installed as mor_session_set_exit_policy() does (the
 * budget window restarts). There are no logits until the next step. States of the previous
 * format version 3 are still accepted; they carry no fingerprint, so only the model's shape
 * (layers, K/V width, vocabulary, embedding width) is checked for them.
 * @return MOR_OK or MOR_E_STATE (bad magic, version, shape or size, saved from a different
 * model, an invalid policy or sampler setting, or any other inconsistency: the message says
 * which). On any refusal the session is left exactly as it was: tokens, K/V, logits, depths,
 * statistics, policy, sampler and RNG, the budget window and FREE's threshold data. */
MOR_API size_t mor_session_state_size(const mor_session *session);
MOR_API int    mor_session_state_save(const mor_session *session, void *buf, size_t capacity,
                                      size_t *n_written);
MOR_API int    mor_session_state_load(mor_session *session, const void *buf, size_t size);

/*-************************************************************************************************
 *  Sampling
 **************************************************************************************************/

/* mor_session_set_sampler(): copy the sampler settings into the session and seed its RNG.
 * params NULL restores the defaults (greedy). The rules: temperature finite, top_p in (0, 1],
 * min_p in [0, 1], repeat_penalty positive and finite, repeat_last_n >= 0 (top_k and seed take
 * any value); mor_session_state_load() applies the same ones. @return MOR_OK or MOR_E_INVALID
 * (a value out of range, named in mor_session_last_error; the session is unchanged). */
MOR_API int mor_session_set_sampler(mor_session *session, const mor_sampler_params *params);

/* mor_session_sample(): pick the next token from the logits of the last token of the last step,
 * applying repetition penalty, temperature, top-k, top-p and min-p in that order, and drawing
 * from the session's RNG. Greedy when temperature <= 0 (the first of equal maxima; a NaN logit
 * is never picked). Does not append the token: pass it to
 * mor_session_step(). @return MOR_OK, or MOR_E_INVALID (no logits: step first). */
MOR_API int mor_session_sample(mor_session *session, int32_t *token);

/* Constrained sampling: an additive logit bias per token and a set of allowed tokens, applied
 * by mor_session_sample() before the repetition penalty, temperature and the cuts, to a copy of
 * the logits (mor_session_logits() still returns the model's). A game character choosing among
 * given actions allows only their first tokens; a bias of -INFINITY bans a token. Both are
 * settings of the session, like the sampler: they survive steps, rewind and reset, and they
 * are not part of the saved state. The first call that sets one allocates 5 bytes per
 * vocabulary entry from the session's allocator, once.
 *
 * mor_session_set_logit_bias(): replace the bias: token ids[i] gets bias[i] added (an id given
 * twice gets the sum). n = 0 (ids and bias may be NULL) removes every bias. Each bias is
 * finite or -INFINITY. mor_session_set_allowed_tokens(): replace the allowed set: only the n
 * ids given may be sampled (duplicates are allowed); ids = NULL with n = 0 allows every token
 * again. An empty set (ids not NULL, n = 0) is refused: it would leave nothing to sample.
 * @return MOR_OK; MOR_E_TOKEN (an id outside [0, n_vocab): the message names it and its
 * index); MOR_E_INVALID (NULL session, NULL array with n > 0, n < 0, an empty allowed set, a
 * NaN or +INFINITY bias, named in mor_session_last_error); MOR_E_NOMEM; MOR_E_BUSY. A refused
 * call changes nothing.
 *
 * With constraints, mor_session_sample() picks only allowed tokens whose biased logit is not
 * -INFINITY (greedy: the first of the largest biased logits; a NaN logit is never picked), and
 * returns MOR_E_INVALID ("every token is excluded") if none is left. */
MOR_API int mor_session_set_logit_bias(mor_session *session, const int32_t *ids, const float *bias, int32_t n);
MOR_API int mor_session_set_allowed_tokens(mor_session *session, const int32_t *ids, int32_t n);

/*-************************************************************************************************
 *  Exit policy
 **************************************************************************************************/

/* mor_session_set_exit_policy(): choose how deep tokens go, and what happens to the K/V of the
 * layers they skip, from the next step on. NULL restores the model's default (the built-in one,
 * or the one the file sets with mor.policy.* keys, docs/FORMAT.md; sessions start with it). Changing the KV
 * strategy of a session that holds tokens is refused (reset first). Which policies and
 * strategies fit which models is in docs/POLICIES.md.
 * @return MOR_OK; MOR_E_INVALID (a value out of range: depth outside 1..n_steps, threshold or
 * budget out of range, unknown policy, metric or strategy; the previous policy stays, the message
 * names the field); MOR_E_UNSUPPORTED (the model cannot run it: a router policy without a router,
 * CAPACITY without an expert-choice router, per-step exits with sequence sharing or token-choice,
 * KV_SHARE without recursions, KV_SYNC with a router). A refused policy changes nothing; an
 * accepted one restarts the budget window, and FREE's threshold data when FREE or its threshold
 * is new. mor_session_state_load() checks a saved policy with the same rules. */
MOR_API int mor_session_set_exit_policy(mor_session *session, const mor_exit_policy *policy);

/*-************************************************************************************************
 *  Router interface (custom depth decisions)
 **************************************************************************************************/
#define MOR_ROUTER_API_VERSION 1

/* What a router sees before a step: the tokens still active (those that ran every earlier
 * step). All pointers are borrowed for the duration of the call; rows are in token order. */
typedef struct mor_route_batch {
    uint32_t       size;          /* sizeof(mor_route_batch) */
    int32_t        step;          /* the step about to run, 0 .. n_steps-1 */
    int32_t        n_steps;
    int32_t        n_tokens;      /* rows below */
    int32_t        n_embd;
    const int32_t *positions;     /* [n_tokens] absolute positions */
    const float   *hidden;        /* [n_tokens][n_embd] residual stream entering the step */
    const float   *router_score;  /* [n_tokens] the model's router score for this step (expert:
                                     sigmoid(z); token: the probability of this depth), or NULL */
    const float   *confidence;    /* [n_tokens] exit-head confidence after the previous step
                                     (wants_confidence), or NULL at step 0 */
} mor_route_batch;

/* route(): write keep[i] = 1 for each row that runs the step, 0 for those that stop there.
 * Return 0 on success; any other value aborts the step with MOR_E_CALLBACK (the session is
 * left as before the step). Called on the thread that called mor_session_step() (or
 * mor_sched_step() for a session under a scheduler).
 *
 * What a callback (route, reset, free) may call on its own session and scheduler:
 *   - reading calls (mor_session_logits, _depth, _n_past, _token_info, _get_stats, _last_error,
 *     mor_sched_pending, mor_sched_get_counters) and anything on other objects: allowed;
 *   - calls that change its session (step, rewind, reset, set_exit_policy, set_router,
 *     set_sampler, sample, state_load) or its scheduler (add, remove, submit, cancel, step,
 *     poll): refused with MOR_E_BUSY, nothing changed;
 *   - mor_session_free() of its session, mor_sched_free() of its scheduler: deferred. The call
 *     running the callback stops the session's work and frees the object before it returns:
 *     mor_session_step() / _rewind() then return MOR_E_CANCELLED; mor_sched_step() returns
 *     MOR_OK with the freed session's events dropped. Do not use the pointer afterwards.
 * mor_model_free() of the session's model is allowed: the session keeps the model alive. */
typedef int32_t (*mor_route_fn)(void *user, const mor_route_batch *batch, uint8_t *keep);

typedef struct mor_router_i {
    uint32_t     size;              /* sizeof(mor_router_i) */
    uint32_t     version;           /* MOR_ROUTER_API_VERSION */
    mor_route_fn route;             /* required */
    void       (*reset)(void *user);/* may be NULL: the session was reset or rewound */
    void       (*free)(void *user); /* may be NULL: the session no longer uses the router */
    int32_t      wants_confidence;  /* 1: compute exit-head confidences for `confidence` */
} mor_router_i;

/* mor_session_set_router(): use a custom router (policy MOR_EXIT_CUSTOM) from the next step.
 * The interface is copied; `user` is borrowed until iface->free is called (when another router
 * replaces it, the session is freed, or router is NULL, which restores the default policy).
 * @return MOR_OK, MOR_E_INVALID (no route function, bad size or version), MOR_E_UNSUPPORTED
 * (a model whose depth cannot be decided per step: sequence sharing). */
MOR_API int mor_session_set_router(mor_session *session, const mor_router_i *router, void *user);

/* The same with plain function arguments (for bindings): route and user; no reset/free. */
MOR_API int mor_session_set_router_fn(mor_session *session, mor_route_fn route, void *user,
                                      int32_t wants_confidence);

/*-************************************************************************************************
 *  Telemetry
 **************************************************************************************************/
#define MOR_KVSTAT_NONE       0 /* no token at this position */
#define MOR_KVSTAT_COMPUTED   1 /* every layer it ran wrote its own K/V; skipped ones hold none */
#define MOR_KVSTAT_PROPAGATED 2 /* skipped layers hold K/V computed from its exit state (CALM) */
#define MOR_KVSTAT_DEFERRED   3 /* stacked: deep K/V will be computed by the next deep pass */
#define MOR_KVSTAT_SYNCED     4 /* stacked, then completed by a deep pass: full-depth K/V */
#define MOR_KVSTAT_FULL       5 /* ran every layer */

/* mor_session_token_info(): for the token at absolute position pos (< n_past): the steps it ran,
 * the score of the last decision about it (router score or confidence; NAN if none), and its
 * MOR_KVSTAT_*. Any output pointer may be NULL. @return MOR_OK or MOR_E_INVALID. */
MOR_API int mor_session_token_info(const mor_session *session, int32_t pos, int32_t *depth,
                                   float *score, int32_t *kv_status);

#define MOR_STATS_MAX_DEPTH 32
typedef struct mor_session_stats {
    uint32_t size;                /* set by the caller to sizeof(mor_session_stats) */
    uint32_t kind;                /* unused, 0 */
    int64_t  n_tokens;            /* tokens stepped since the last reset (prompt + generated) */
    int64_t  steps_run;           /* sum of the steps each token ran */
    int64_t  layer_evals;         /* layer applications executed (deep passes included) */
    int64_t  layer_evals_full;    /* layer applications full depth would have executed */
    int64_t  kv_bytes;            /* bytes of K/V entries held now, keys and values in the
                                     cache's element type (F16 entries: 2 bytes each; before
                                     0.3.1 every entry was counted as 4) */
    int64_t  deep_passes;         /* KV_SYNC: deep passes run */
    int64_t  rollbacks;           /* KV_SYNC: rollbacks */
    float    mean_depth;          /* steps_run / n_tokens */
    float    threshold;           /* the threshold in use (FREE adaptive: the learned one) */
    int64_t  depth_hist[MOR_STATS_MAX_DEPTH + 1]; /* tokens by steps run (capped) */
} mor_session_stats;

/* mor_session_get_stats(): fill *stats (up to stats->size bytes). @return MOR_OK or
 * MOR_E_INVALID. */
MOR_API int mor_session_get_stats(const mor_session *session, mor_session_stats *stats);

/* mor_session_rollback(): tokens the last step removed by a KV_SYNC rollback (0 normally). After
 * a rollback, n_past is smaller and the logits are the deep model's at the new end: sample and
 * continue from there. */
MOR_API int32_t mor_session_rollback(const mor_session *session);

/*-************************************************************************************************
 *  Scheduler: many sessions at once (continuous depth-wise batching)
 **************************************************************************************************
 * A scheduler steps many sessions of one model together. Each round it runs one layer for
 * every session whose next layer uses the same weights, as one batch: the shared block of a
 * recursive model is one weight set at every recursion, so tokens of different sessions at
 * different depths share a pass. The stored layers are swept in stack order; a session whose
 * token exits early goes through the last layers and the output head and starts its next
 * token while deeper ones finish (its slot in the batch is refilled), when that streams fewer
 * weight bytes than holding it for the batch's deepest token, as judged from the weights and
 * the recent depths (a head much larger than the block makes exits wait for one batched head
 * product). Every session keeps its own policy, KV strategy, sampler and RNG; its tokens,
 * logits and depths are those of stepping it alone, whatever the schedule.
 *
 *     mor_sched *sc;
 *     mor_sched_create(model, NULL, &sc, err, sizeof err);
 *     mor_sched_add(sc, npc[i]);                                 // for each session
 *     mor_sched_submit(sc, npc[i], prompt, n_prompt, 32);        // prompt, then 32 tokens
 *     while (mor_sched_pending(sc) > 0) {
 *         mor_sched_step(sc);
 *         mor_session *who; int32_t tok, st;
 *         while (mor_sched_poll(sc, &who, &tok, &st) == MOR_OK) ... // tok == -1: done or error
 *     }
 *
 * Thread-safety: a scheduler and its sessions are used from one thread at a time; while a
 * session belongs to a scheduler, mor_session_step() on it is refused (MOR_E_INVALID); the
 * other session calls (logits, sampler, policy, telemetry) stay available between rounds. */
typedef struct mor_sched mor_sched;

#define MOR_PARAMS_SCHED 5
#define MOR_SCHED_CONTINUOUS 0 /* admit work whenever a session's token is done (default) */
#define MOR_SCHED_STATIC     1 /* baseline: run a batch to its deepest token before admitting more */
#define MOR_SCHED_SEQUENTIAL 2 /* baseline: one session at a time, each pass alone */

typedef struct mor_sched_params {
    uint32_t size;          /* sizeof(mor_sched_params) */
    uint32_t kind;          /* MOR_PARAMS_SCHED */
    int32_t  max_batch;     /* most token rows in flight together; default 64 */
    int32_t  n_threads;     /* compute threads of the scheduler; default 1 */
    int64_t  kv_budget;     /* bytes of K/V the sessions may hold together (counted as
                               mor_session_stats.kv_bytes is); 0 = no limit */
    int32_t  mode;          /* MOR_SCHED_*; default CONTINUOUS */
    int32_t  prompt_chunk;  /* most prompt tokens a session brings to one pass; default 16 */
    /* appended in 0.3: */
    mor_allocator allocator; /* the scheduler's memory; zero: the model's allocator */
} mor_sched_params;

MOR_API void mor_sched_params_init(mor_sched_params *p);

/* mor_sched_create(): a scheduler for sessions of `model` (borrowed; must outlive it).
 * @return MOR_OK and *out (free with mor_sched_free), MOR_E_INVALID (a parameter, named in
 * err), MOR_E_NOMEM, MOR_E_THREAD. */
MOR_API int  mor_sched_create(const mor_model *model, const mor_sched_params *params, mor_sched **out,
                              char *err, size_t err_size);
/* mor_sched_free(): drops pending work (sessions stay usable, left as after their last
 * finished token) and releases the scheduler. NULL is a no-op. Sessions are not freed. */
MOR_API void mor_sched_free(mor_sched *sched);

/* mor_sched_add(): put a session (of the same model, in no other scheduler) under the
 * scheduler. mor_sched_remove(): take it out; its pending work is cancelled. @return MOR_OK,
 * MOR_E_INVALID (other model, already scheduled, unknown session), MOR_E_NOMEM. */
MOR_API int  mor_sched_add(mor_sched *sched, mor_session *session);
MOR_API int  mor_sched_remove(mor_sched *sched, mor_session *session);

/* mor_sched_submit(): queue n_tokens tokens (copied; a prompt, 0 allowed when generating
 * after earlier work), then n_generate tokens sampled with the session's sampler, each
 * appended and reported by mor_sched_poll(). @return MOR_OK, MOR_E_TOKEN, MOR_E_CONTEXT_FULL
 * (the request cannot fit the session's context: nothing is queued), MOR_E_INVALID. */
MOR_API int  mor_sched_submit(mor_sched *sched, mor_session *session, const int32_t *tokens,
                              int32_t n_tokens, int32_t n_generate);

/* mor_sched_cancel(): drop the session's queued work; a token in flight is completed or
 * dropped cleanly (the session is left as after its last finished token). Others continue. */
MOR_API int  mor_sched_cancel(mor_sched *sched, mor_session *session);

/* mor_sched_step(): one round (one batched layer, plus admitting and finishing tokens).
 * @return MOR_OK; errors of a session are reported through mor_sched_poll() and end that
 * session's queued work only. */
MOR_API int  mor_sched_step(mor_sched *sched);

/* mor_sched_pending(): sessions with work queued or in flight. */
MOR_API int32_t mor_sched_pending(const mor_sched *sched);

/* mor_sched_poll(): the next event, in order: a generated token (status MOR_OK, token >= 0),
 * the end of a session's request (MOR_OK, token -1), or an error that ended it (status < 0,
 * token -1; the message is in mor_session_last_error). @return MOR_OK with an event, or
 * MOR_E_NOT_FOUND when none is waiting. */
MOR_API int  mor_sched_poll(mor_sched *sched, mor_session **session, int32_t *token, int32_t *status);

/* Counters since creation: rounds run, token rows processed by batched layers, and the mean
 * number of rows per batched layer (batch occupancy).
 * Deprecated: use mor_sched_get_counters(), which has these and more (rounds, layer_rows, and
 * the mean as layer_rows / layer_runs). This call stays exported and keeps working. */
MOR_DEPRECATED("use mor_sched_get_counters")
MOR_API int  mor_sched_stats(const mor_sched *sched, int64_t *rounds, int64_t *layer_rows, double *mean_rows);

/* All counters since creation (a struct that may grow: set size). */
typedef struct mor_sched_counters {
    uint32_t size;          /* set by the caller to sizeof(mor_sched_counters) */
    uint32_t kind;          /* unused, 0 */
    int64_t  rounds;        /* mor_sched_step() calls */
    int64_t  layer_runs;    /* batched layer runs */
    int64_t  layer_rows;    /* token rows over those runs */
    int64_t  head_runs;     /* batched head products: the output head, and exit heads read by
                               confidence policies at the end of a step */
    int64_t  head_rows;     /* rows over those products */
    int64_t  tokens;        /* generated tokens reported */
    int32_t  refill;        /* 1: exits refill the batch now; 0: they wait for the deepest token */
} mor_sched_counters;

/* mor_sched_get_counters(): fill *c (up to c->size bytes). @return MOR_OK or MOR_E_INVALID. */
MOR_API int  mor_sched_get_counters(const mor_sched *sched, mor_sched_counters *c);

/* ---- BEGIN TOKENIZER API ---- */
/*-************************************************************************************************
 *  Tokenizer
 **************************************************************************************************/
/* Text <-> token ids with the vocabulary stored in the model file (tokenizer.ggml.* keys):
 * SentencePiece-style BPE ("llama": scores, byte fallback, the U+2581 space marker, dummy
 * prefix) and byte-level BPE ("gpt2": ranked merges, GPT-2 byte map, the pre-tokenizer named
 * by tokenizer.ggml.pre). docs/TOKENIZER.md lists what is supported and how it was verified.
 *
 * Text is UTF-8 given as (pointer, length): NUL bytes are ordinary characters and the text need
 * not be NUL-terminated. Bytes that are not well-formed UTF-8 are kept, never replaced: each
 * one becomes its byte-fallback / byte-level token, so detokenizing gives the bytes back; a
 * byte the vocabulary has no token for is refused (MOR_E_ENCODING, see mor_tokenize), never
 * dropped.
 * Every function below is thread-safe on a shared model; they return MOR_E_NOT_FOUND when the
 * model has no vocabulary, MOR_E_INVALID for NULL arguments (a buffer may be NULL only with
 * capacity 0), MOR_E_TOKEN for an id outside [0, n_vocab). */

#define MOR_TOKENIZE_ADD_SPECIAL     1u /* add BOS / EOS where the file's add_bos/add_eos say */
#define MOR_TOKENIZE_PARSE_SPECIAL   2u /* control-token text in the input (e.g. "<s>",
                                           "<|endoftext|>") becomes that token; without it the
                                           text is tokenized as plain text */
#define MOR_DETOKENIZE_SPECIAL       4u /* render control / unknown tokens as their text
                                           (default: they render as nothing) */
#define MOR_DETOKENIZE_KEEP_PREFIX   8u /* keep the space SentencePiece vocabularies add at the
                                           start of the text (default: removed, so that
                                           detokenize(tokenize(x)) == x) */

/* mor_tokenize(): tokenize text[0..text_len) into tokens (capacity entries). *n_tokens
 * receives the count. Each byte is encoded by the tokens of its character (byte-level BPE:
 * of the byte's GPT-2 character), else by its byte token <0xNN>. In a SentencePiece
 * vocabulary that has no byte token for it, a character that is not a token becomes the
 * unknown token, one per byte (SentencePiece writes it there too, though not one per byte;
 * see mor_detokenize). A byte with none of these fails the whole call with MOR_E_ENCODING:
 * byte-level vocabularies often lack bytes that never occur in UTF-8 (0xC0, 0xC1, 0xF5..0xFF),
 * starcoder and refact also 0xF1 (the first byte of U+40000..U+7FFFF); SentencePiece
 * vocabularies only when they have neither byte tokens nor an unknown token.
 * @return MOR_OK, or MOR_E_BUFFER_SMALL with *n_tokens = the count needed and tokens
 * untouched (call with capacity 0 to size the buffer), MOR_E_ENCODING with *n_tokens = the
 * byte offset of the first byte the vocabulary cannot encode, so text[*n_tokens] names it (a
 * vocabulary that cannot encode U+2581 at all fails on its own dummy-prefix space: the offset
 * is where that space goes), tokens untouched and a warning naming the byte (hex) and offset
 * logged; the sizing call gets MOR_E_ENCODING too, not MOR_E_BUFFER_SMALL. MOR_E_INVALID
 * (text longer than 1 GiB), MOR_E_NOMEM. */
MOR_API int mor_tokenize(const mor_model *model, const char *text, size_t text_len, int32_t *tokens,
                         size_t capacity, uint32_t flags, size_t *n_tokens);

/* mor_token_to_piece(): the raw bytes of one token (not NUL-terminated): spaces for U+2581,
 * the byte of a byte token, the GPT-2 byte map undone. A piece may be part of a UTF-8
 * character: use mor_detok_* to print a stream. Control / unknown tokens give nothing unless
 * flags has MOR_DETOKENIZE_SPECIAL. No dummy-prefix space is removed here.
 * @return MOR_OK, MOR_E_BUFFER_SMALL (*n_bytes = bytes needed), MOR_E_TOKEN. */
MOR_API int mor_token_to_piece(const mor_model *model, int32_t token, char *buf, size_t capacity,
                               uint32_t flags, size_t *n_bytes);

/* mor_detokenize(): the text of a token sequence (not NUL-terminated). For SentencePiece
 * vocabularies that add a dummy prefix, one leading space is removed from the first text token
 * of the sequence and from the first text token after each control / unknown / user-defined
 * token (where mor_tokenize added one), unless MOR_DETOKENIZE_KEEP_PREFIX. With default flags
 * detokenize(tokenize(x)) == x for every byte string x that mor_tokenize accepts, with exactly
 * these exceptions, both in SentencePiece vocabularies: U+2581 in x reads back as a space (it
 * is SentencePiece's space marker: as in the reference tokenizers, it gives the same ids as a
 * space); a character that became the unknown token (no byte tokens, see mor_tokenize) reads
 * back as nothing, and the following token loses a leading space, as after any unknown token.
 * A byte the vocabulary cannot encode gives MOR_E_ENCODING from mor_tokenize, never a
 * shorter text.
 * @return MOR_OK, MOR_E_BUFFER_SMALL (*n_bytes = bytes needed; buf holds a prefix),
 * MOR_E_TOKEN (nothing written). */
MOR_API int mor_detokenize(const mor_model *model, const int32_t *tokens, size_t n_tokens, char *buf,
                           size_t capacity, uint32_t flags, size_t *n_bytes);

/* Vocabulary facts. n_vocab: tokens in the vocabulary (-1: no vocabulary). Special ids: -1 if
 * the model has none (or no vocabulary). is_eog: 1 if the token ends generation (EOS, EOT,
 * EOM and end-of-turn markers such as "<|endoftext|>"), else 0. token_type: the GGUF token
 * type (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte), -1 for a bad id. */
MOR_API int32_t mor_model_n_vocab(const mor_model *model);
MOR_API int32_t mor_model_token_bos(const mor_model *model);
MOR_API int32_t mor_model_token_eos(const mor_model *model);
MOR_API int32_t mor_model_token_unk(const mor_model *model);
MOR_API int32_t mor_model_token_pad(const mor_model *model);
MOR_API int32_t mor_model_token_eot(const mor_model *model);
MOR_API int     mor_model_token_is_eog(const mor_model *model, int32_t token);
MOR_API int     mor_model_token_type(const mor_model *model, int32_t token);

/* Streaming detokenizer: push tokens one at a time and print what comes back. It emits only
 * complete UTF-8 characters: a piece that ends inside a character is held (at most 3 bytes)
 * until the next piece completes it; bytes that can never form a character are emitted as
 * they are. The concatenated output of every push plus the final flush equals
 * mor_detokenize() of the whole sequence with the same flags (MOR_DETOKENIZE_*), so a stream
 * that starts with the prompt's tokens prints the prompt text exactly.
 * mor_detok_create(): caller owns *out (mor_detok_free). Holds the model (see
 * mor_model_free): the model stays loaded while the detokenizer lives. A mor_detok is not
 * thread-safe: use one per stream.
 * mor_detok_push(): *n_bytes = bytes written. MOR_E_BUFFER_SMALL: *n_bytes = room needed,
 * nothing consumed (retry with a larger buffer); 64 bytes more than the longest piece always
 * suffice. mor_detok_flush(): emit the held bytes (end of stream).
 * mor_detok_reset(): forget held bytes; the next push starts a new text. */
typedef struct mor_detok mor_detok;
MOR_API int  mor_detok_create(const mor_model *model, uint32_t flags, mor_detok **out);
MOR_API int  mor_detok_push(mor_detok *d, int32_t token, char *buf, size_t capacity, size_t *n_bytes);
MOR_API int  mor_detok_flush(mor_detok *d, char *buf, size_t capacity, size_t *n_bytes);
MOR_API void mor_detok_reset(mor_detok *d);
MOR_API void mor_detok_free(mor_detok *d);
/* ---- END TOKENIZER API ---- */

/*-************************************************************************************************
 *  Stop strings
 **************************************************************************************************/
/* A stop matcher ends a stream of text at the first occurrence of any of its stop strings,
 * even one that spans pieces. Feed it what mor_detok_push() returns, in order; it emits the
 * bytes that can no longer be part of a stop string and holds back the longest tail that
 * could still begin one (at most the longest stop string's length minus 1 bytes). The
 * concatenated output of every push, plus the final flush when no stop string matched, is the
 * stream's text up to (not including) the first stop string: the earliest occurrence, the
 * first listed on a tie. Fed complete UTF-8 characters (as mor_detok_push() emits them) and
 * given stop strings that are well-formed UTF-8, it cuts only between characters.
 *
 *     mor_stop *stop;
 *     const char *stops[] = {"\n\n", "The end"};
 *     mor_stop_create(stops, 2, NULL, &stop);
 *     ... for each token: mor_detok_push(d, tok, piece, sizeof piece, &n);
 *         mor_stop_push(stop, piece, n, text, sizeof text, &m, &which);
 *         fwrite(text, 1, m, stdout);
 *         if (which >= 0) break;                      // stop string `which` was reached
 *     ... at the end of the stream: mor_stop_flush(stop, text, sizeof text, &m);
 *
 * mor_stop_create(): n stop strings (NUL-terminated, each 1..4096 bytes; copied); n = 0 gives
 * a matcher that passes everything through. alloc: the matcher's memory (NULL: the C
 * library's). @return MOR_OK and *out (mor_stop_free), MOR_E_INVALID (NULL out, n < 0, a NULL
 * or empty or too long string), MOR_E_NOMEM.
 * mor_stop_push(): feed len bytes of piece (need not be NUL-terminated); *n_out bytes are
 * written to out, and *matched is the index of the stop string found (-1: none yet). After a
 * match the stream has ended: further pushes emit nothing and report the same index until
 * mor_stop_reset(). @return MOR_OK; MOR_E_BUFFER_SMALL (*n_out = bytes needed, nothing
 * consumed; len + the longest stop string always suffice); MOR_E_INVALID (NULL arguments).
 * mor_stop_flush(): end of the stream without a match: emit the held bytes. Same returns.
 * mor_stop_reset(): forget the held bytes and any match; the next push starts a new stream.
 * A mor_stop is not thread-safe: use one per stream. */
typedef struct mor_stop mor_stop;
MOR_API int  mor_stop_create(const char *const *stops, int32_t n, const mor_allocator *alloc, mor_stop **out);
MOR_API int  mor_stop_push(mor_stop *stop, const char *piece, size_t len, char *out, size_t capacity,
                           size_t *n_out, int32_t *matched);
MOR_API int  mor_stop_flush(mor_stop *stop, char *out, size_t capacity, size_t *n_out);
MOR_API void mor_stop_reset(mor_stop *stop);
MOR_API void mor_stop_free(mor_stop *stop);

#ifdef __cplusplus
}
#endif

#endif /* MOR_H */
