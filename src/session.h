// session.h: per-sequence mutable state: KV cache, work buffers, logits, sampler, policy.
//
// Everything a step needs is allocated once by mor_session_create(): the decode and prefill
// hot path does not allocate. A session is used by one thread at a time.
//
// KV cache layout: one slot per unrolled layer l. A slot holds up to n_ctx entries, each the
// post-RoPE key and the value of one token (n_head_kv * head_dim floats each) and that
// token's absolute position. Entries are appended in increasing position order, so a slot is
// always sorted by position and the entries a query at position p may attend to are a prefix
// (those with pos <= p). Slots of recursions that only some tokens reach hold only those
// tokens; each slot has its own length. With KV sharing, layers at recursion >= 1 own no slot
// and read the slot of the recursion-0 layer of the same stored layer.
#ifndef MOR_SESSION_H
#define MOR_SESSION_H

#include "kernels.h"
#include "model.h"
#include "thread.h"

typedef struct {
    float   *k;     // [n_ctx][kv_dim] (NULL for a layer that writes nothing)
    float   *v;     // [n_ctx][kv_dim]
    int32_t *pos;   // [n_ctx] absolute positions, increasing
    int32_t  len;
} mor__kv_slot;

typedef struct {
    float    temperature, top_p, min_p, repeat_penalty;
    int32_t  top_k, repeat_last_n;
    uint64_t seed;
} mor__sampler;

typedef struct {
    int32_t policy;     // MOR_EXIT_*
    int32_t depth;      // FIXED
    float   threshold;  // ROUTER (expert)
    int32_t min_depth;
} mor__policy;

struct mor_session {
    const mor_model    *model;
    const mor__kernels *kern;
    int32_t             n_ctx, n_batch, n_threads;
    uint32_t            flags;
    int32_t             n_past;
    int32_t            *tokens;      // [n_ctx] the sequence so far
    mor__kv_slot       *slots;       // [n_layer]
    // last step
    int32_t             n_last;      // tokens in the last step
    int32_t             n_logits;    // rows in logits (1, or n_last with LOGITS_ALL)
    float              *logits;      // [n_batch or 1][n_vocab]
    int32_t            *depths;      // [n_batch] depth of each token of the last chunk
    int32_t            *depth_all;   // [n_batch] depths of the whole last step (first n_batch)
    // work buffers, sized for n_batch tokens
    float *x, *xb, *q, *k, *v, *ao, *hb, *hb2, *tmp, *lora;
    float *att;                      // [n_threads][n_ctx] attention scores
    float *row;                      // [n_threads][row_stride] converted weight rows
    size_t row_stride;
    mor__pool *pool;                 // compute threads (n_threads - 1 workers)
    float *rope_cos, *rope_sin;      // [n_batch][head_dim/2]
    float *h_in, *xa, *gate;         // router: block input, compacted rows, gate per token
    float *router_h;                 // [n_batch][2d + n_rec] router scratch
    int32_t *act, *act_pos, *tok_depth, *tok_choice;
    uint8_t *alive;
    // sampling and policy
    mor__sampler        sampler;
    uint64_t            rng;
    float              *probs;       // [n_vocab] sampling scratch
    int32_t            *cand;        // [n_vocab] sampling scratch
    mor__policy         policy;
    char                err[256];
};

// Forward pass over T <= n_batch tokens at positions n_past .. n_past+T-1 (forward.c).
// Writes the logits of the last token (all tokens if logits_all) and the per-token depths.
int  mor__forward(mor_session *s, const int32_t *tokens, int32_t T, int logits_all);

// Sets the session's error message and returns status.
int  mor__session_fail(mor_session *s, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
