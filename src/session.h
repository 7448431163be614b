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

#include "alloc.h"
#include "kernels.h"
#include "model.h"
#include "thread.h"

// Rows whose exit-head logits a session computes in one product (confidence policies reading
// the head of many prompt rows): the head is read once for them.
#define MOR__CONF_GROUP 8

typedef struct {
    float    *k;     // [n_ctx][kv_dim] F32 entries (NULL with MOR_SESSION_KV_F16)
    float    *v;     // [n_ctx][kv_dim]
    uint16_t *k16;   // [n_ctx][kv_dim] F16 entries (MOR_SESSION_KV_F16), else NULL
    uint16_t *v16;
    int32_t  *pos;   // [n_ctx] absolute positions, increasing
    int32_t   len;
} mor__kv_slot;

// Scratch for a batched layer: a session's own buffers, or a scheduler's (sized for its batch).
typedef struct mor__work {
    float              *xb, *q, *k, *v, *ao, *hb, *hb2, *tmp, *lora;  // [rows][width]
    float              *att;          // [threads][att_stride] attention scores
    size_t              att_stride;
    float              *row;          // [threads][row_stride] converted weight rows
    size_t              row_stride;
    mor__pool          *pool;
    const mor__kernels *kern;
    int32_t             rows;         // row capacity of the buffers
} mor__work;

// One session's share of a batched layer: n rows (xr, updated in place) of pass rows idx.
typedef struct {
    struct mor_session *s;
    int32_t             l;            // unrolled layer
    float              *xr;
    const int32_t      *idx;
    int32_t             n;
} mor__part;

// The state of a pass in progress over a session's rows (forward.c).
typedef struct {
    int32_t T, R;          // new rows, all rows (new + stacked)
    int     force;         // the KV_SYNC stack is full: every new row goes deep
    int     any_new;       // some new row runs the current step
    int     logits_all;
    int32_t l;             // next unrolled layer to run (n_layer: done)
    int32_t k;             // current step
    int32_t n_act;         // rows in the current step
    int     seen_steps;    // the steps are behind (a unique last layer follows)
    int     gathered;      // the unique layer runs on gathered rows (scatter back after)
    int     active;        // a pass is in progress
} mor__pass;

typedef struct {
    float    temperature, top_p, min_p, repeat_penalty;
    int32_t  top_k, repeat_last_n;
    uint64_t seed;
} mor__sampler;

typedef struct {
    int32_t policy;     // MOR_EXIT_*
    int32_t depth;      // FIXED
    float   threshold;
    int32_t min_depth;
    int32_t metric;     // MOR_CONF_*
    float   decay_tau;
    int32_t decay_len;
    int32_t shallow;    // FREE
    int32_t adaptive;   // FREE
    int32_t kv;         // resolved MOR_KV_* (never AUTO)
    float   budget;
    int32_t budget_window;
    float   rollback;
} mor__policy;

// Beta-mixture calibration data for the FREE adaptive threshold (session-owned).
#define MOR__BMM_CAP 4096
typedef struct {
    float   conf[MOR__BMM_CAP];
    uint8_t agree[MOR__BMM_CAP];
    int32_t n, next;      // pairs held, ring write index
    int32_t n_fits;       // refits done (frozen after 300, as the reference schedule)
    float   lambda;       // current threshold (the static one until the first fit)
} mor__bmm;

// Per-position telemetry, kept for the whole sequence.
typedef struct {
    int8_t  *depth;       // [n_ctx]
    float   *score;       // [n_ctx]
    uint8_t *kv;          // [n_ctx] MOR_KVSTAT_*
    uint8_t *given;       // [n_ctx] 1: stepped as part of a multi-token step (a prompt), so
                          // never replaced by a rollback
} mor__trace;

struct mor_session {
    mor_allocator       alloc;       // every buffer below comes from it (alloc.h)
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
    mor__work  w;                    // the buffers above, as a layer workspace
    mor__pass  ps;                   // the pass in progress
    float *rope_cos, *rope_sin;      // [n_batch][head_dim/2]
    float *h_in, *xa, *gate;         // router: block input, compacted rows, gate per token
    float *router_h;                 // [n_batch][2d + n_rec] router scratch
    int32_t *act, *act_pos, *tok_depth, *tok_choice;
    uint8_t *alive;
    // rows of a pass: new tokens, then stacked tokens (KV_SYNC) that may join a deep pass
    int32_t *tpos;                   // [n_batch] absolute position of each row
    int32_t *row_start;              // [n_batch] step a stacked row resumes at (0 for new rows)
    uint8_t *joined;                 // [n_batch] row takes part in the current layers
    int32_t *exit_step;              // [n_batch] steps run when the row stopped (n_steps: all)
    float   *conf, *cosv, *rscore;   // [n_batch] last confidence, saturation cosine, router score
    int32_t *cap;                    // [n_batch] budget cap on steps
    float   *h_step;                 // [n_batch][d] state entering the current step
    float   *h_exit;                 // [n_batch][d] state of a row when it left the steps (KV_SYNC)
    float   *vocab_buf;              // [conf_group][n_vocab] exit-head logits scratch
    int32_t  conf_group;             // 1, or up to MOR__CONF_GROUP rows for confidence policies
    const float *conf_logits;        // exit-head logits of the rows ending a step, computed by a
                                     // scheduler for many sessions at once (NULL: compute here)
    int32_t *shallow_top;            // [n_batch] argmax of the exit head when a row stopped
    // KV strategy state
    int32_t *slot_of;                // [n_layer] slot a layer reads (per strategy)
    uint8_t *slot_write;             // [n_layer] whether a layer writes its own entries
    // the stack of exited tokens waiting for a deep pass (KV_SYNC)
    int32_t  n_stack;
    int32_t *stack_pos, *stack_step, *stack_top;
    float   *stack_h, *stack_conf;   // [n_batch][d], [n_batch]
    int32_t  rolled_back;            // tokens removed by the last step's rollback
    int32_t  rollback_to;            // set by a pass: position to roll back to, or -1
    int32_t  logit_row0;             // first row of `logits` a pass writes
    int32_t *row_head;               // [n_batch] head that gives a row's logits (-1: final)
    // custom router
    mor_router_i router;
    void    *router_user;
    int      has_router;
    // telemetry
    mor__trace trace;
    int64_t  st_tokens, st_steps, st_evals, st_evals_full, st_deep, st_rollbacks;
    int64_t  st_hist[MOR_STATS_MAX_DEPTH + 1];
    int32_t *budget_ring;            // [budget_window] depths of the last tokens
    int32_t  budget_n, budget_next, budget_cap_alloc;
    mor__bmm *bmm;
    int32_t  ring_save_next, ring_save_n;  // budget ring before the pass (restored on abort)
    struct mor_sched *sched;         // the scheduler the session belongs to, or NULL
    // re-entry: a router callback runs inside a step; what it may call is in mor.h
    int      busy;                   // > 0 while one of the session's callbacks runs
    int      free_pending;           // mor_session_free() came from a callback: freed on return
    int      model_ref;              // holds a reference to the model (mor__model_ref)
    // sampling and policy
    mor__sampler        sampler;
    uint64_t            rng;
    float              *probs;       // [n_vocab] sampling scratch
    int32_t            *cand;        // [n_vocab] sampling scratch
    mor__policy         policy;
    char                err[256];
};

// Forward pass over T <= n_batch new tokens at positions n_past .. n_past+T-1, plus the
// stacked tokens of KV_SYNC (forward.c). Writes the logits of the last new token (every new
// token if logits_all), the per-token depths and the telemetry. On error (a router callback),
// returns the status; the caller restores the KV slots.
int  mor__forward(mor_session *s, const int32_t *tokens, int32_t T, int logits_all);

// The same pass, one layer at a time, so that a scheduler can batch the layers of several
// sessions (forward.c). The new tokens must already be in s->tokens[n_past .. n_past+T-1].
// begin and advance return a status (a router callback failed: abandon the pass, then
// restore the KV slots with mor__truncate_slots(s, n_past)).
int     mor__pass_begin(mor_session *s, int32_t T, int logits_all);
int32_t mor__pass_next(const mor_session *s);          // next layer, -1 when the layers are done
void    mor__pass_part(mor_session *s, mor__part *p);   // the rows of that layer
int     mor__pass_advance(mor_session *s);             // after the layer ran
void    mor__pass_finish(mor_session *s);              // logits, telemetry, stack
// For batching the output projection of several sessions: 1 and the normalized state of the
// session's one output row in xn (d floats) when its logits come from the final head (one new
// token, no LOGITS_ALL); 0 otherwise. mor__pass_finish_with() then takes those logits.
int     mor__pass_head_row(mor_session *s, float *xn);
void    mor__pass_finish_with(mor_session *s, const float *logits);
// Rows whose exit-head logits the next mor__pass_advance() reads (the layer just run ends a
// step and the policy measures confidence): their count, the head in *head (-1: the final
// head), and, when xn is not NULL, their states normalized for that head, one row each.
// mor__pass_conf_logits() hands over the logits of exactly those rows, in that order, for the
// next advance (which would otherwise compute them one row at a time).
int32_t mor__pass_conf_rows(mor_session *s, float *xn, int32_t *head);
void    mor__pass_conf_logits(mor_session *s, const float *logits);

// A layer on the rows of several parts; parts whose weights are the same memory share every
// projection (layer.c). The parts' rows must fit w->rows.
void mor__run_layers(mor__work *w, const mor_model *m, const mor__part *parts, int n_parts);
// y[T][rows] = x[T][cols] * W^T with the workspace's threads.
void mor__matmul(mor__work *w, const mor__mat *W, const float *x, int64_t T, float *y);
// Pre-norm of one row and the K/V of layer l from it, inserted into the session's slot (CALM
// propagation).
void mor__propagate_kv(mor_session *s, int32_t l, const float *h, int32_t row);
// Confidence in [0, 1] of V logits by metric MOR_CONF_*; *top receives the argmax.
float mor__confidence(const mor__kernels *k, const float *l, int32_t V, int metric, int32_t *top);

// Stepping in pieces (session.c), shared by mor_session_step and the scheduler: validate a
// request of n tokens (queued: tokens already waiting), the size of the next pass, copy its
// tokens in, abandon a failed pass, and commit a finished one (returns 1 after a rollback).
int     mor__session_check(mor_session *s, const int32_t *tokens, int32_t n, int32_t queued);
int32_t mor__session_chunk(const mor_session *s, int32_t n, int32_t off);
void    mor__session_prepare(mor_session *s, const int32_t *tokens, int32_t T, int given, int32_t off);
int     mor__session_abort(mor_session *s, int st);
int     mor__session_commit(mor_session *s, int32_t T, int32_t off);


// KV slot maintenance (session.c): drop entries at positions >= n_keep.
void mor__truncate_slots(mor_session *s, int32_t n_keep);
// Bytes of K/V the session's slots hold (F32 keys and values).
int64_t mor__session_kv_bytes(const mor_session *s);
// Refit the FREE threshold from the collected pairs (policy.c).
void mor__bmm_refit(mor_session *s);
// The model's default policy, and the slot map of the session's KV strategy (policy.c).
void mor__policy_default(const mor_model *m, mor__policy *p);
void mor__apply_kv(mor_session *s);
// Validation of an exit policy for model m and a session with (has_router) or without a
// custom router and batch size n_batch; defaults resolved into *out. Touches no session: the
// message goes to err. Returns MOR_OK, MOR_E_INVALID or MOR_E_UNSUPPORTED (policy.c). The rule
// that a session holding tokens keeps its KV strategy is the caller's.
int  mor__policy_check(const mor_model *m, const mor_exit_policy *q, int has_router, int32_t n_batch,
                       mor__policy *out, char *err, size_t err_n);
// Makes a checked policy the session's: slot map, budget window restarted, FREE calibration
// restarted when FREE or its threshold is new (policy.c).
void mor__policy_install(mor_session *s, const mor__policy *np);
// Validation of sampler settings (the rules of mor_session_set_sampler); the message goes to
// err. Returns MOR_OK or MOR_E_INVALID (sampler.c).
int  mor__sampler_check(const mor__sampler *sp, char *err, size_t err_n);

#define MOR__BUDGET_MAX_WINDOW 4096

// Hands the custom router back to its owner (its free callback, if any, with the session busy).
void mor__router_release(mor_session *s);
// Calls that change a session are refused (MOR_E_BUSY) while one of its callbacks runs.
#define MOR__REFUSE_BUSY(s)                                                                      \
    do {                                                                                         \
        if ((s)->busy) return mor__session_fail((s), MOR_E_BUSY, "%s() called from a callback of the same session", __func__); \
    } while (0)
// 1 while mor_sched_step() runs (sched.c): its sessions are freed when it returns.
int mor__sched_busy(const struct mor_sched *sc);

// Sets the session's error message and returns status.
int  mor__session_fail(mor_session *s, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
