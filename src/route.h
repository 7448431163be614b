// route.h: routing and exit decisions: the model's routers (expert-choice gates, token-choice
// depth picks), the confidence and saturation measures, and the exit policies, one small rule
// each behind one interface (the way each sampler of a chain is one small object). The pass
// cursor (forward.c) asks, before each depth step, which of its rows run it.
#ifndef MOR_ROUTE_H
#define MOR_ROUTE_H

#include "work.h"

// Per-row state of a pass. Rows 0..T-1 are the new tokens of the pass; T..R-1 are stacked
// tokens (KV_SYNC) that may join a deep pass. Every array has n_batch rows.
typedef struct {
    float   *x;            // [rows][n_embd] residual state
    float   *xa;           // [rows][n_embd] the rows of the current step or layer, gathered
    float   *h_step;       // [rows][n_embd] state entering the current step
    float   *h_exit;       // [rows][n_embd] state when the row left the steps (KV_SYNC)
    float   *h_in;         // [rows][n_embd] token-choice: the state entering the recursion, H^1
    float   *rope_cos;     // [rows][head_dim / 2] rotation of the row's position
    float   *rope_sin;
    float   *depth_p;      // [rows][max(n_rec, 2)] token-choice: weight p_i of each depth
    float   *gate;         // [rows] weight of the step's output (expert-choice), or p_i at exit
    float   *conf;         // [rows] exit-head confidence after the row's last step
    float   *cosv;         // [rows] cosine of the state across the row's last step
    float   *rscore;       // [rows] router score in [0, 1]
    int32_t *tpos;         // [rows] absolute position
    int32_t *row_start;    // [rows] step a stacked row resumes at (0 for new rows)
    int32_t *exit_step;    // [rows] steps run when the row stopped (n_steps: all)
    int32_t *step_cap;     // [rows] most steps the compute budget allows the row
    int32_t *shallow_top;  // [rows] argmax of the exit head when the row stopped, or -1
    int32_t *row_head;     // [rows] head whose logits the row gets (-1: the final head)
    int32_t *tok_depth;    // [rows] steps the row ran
    int32_t *tok_choice;   // [rows] token-choice: the last step the router picked (0-based)
    int32_t *act;          // [rows] the rows of the current step or layer, increasing
    int32_t *act_pos;      // [rows] 0, 1, 2, ...: every row, in place
    uint8_t *alive;        // [rows] still in the steps
    uint8_t *joined;       // [rows] takes part in the current layers
} mor__rows;

// Scratch of the routing decisions, sized for n_batch rows.
typedef struct {
    float   *z, *z_aux;    // [rows][max(n_rec, 1)] router logits (decision router: z_aux)
    float   *hid;          // [rows][max(2 n_embd if an MLP router, n_embd)] router hidden
                           // layer, then the states handed to a custom router
    float   *score, *conf; // [rows] a custom router's view of the candidates
    int32_t *pos;          // [rows]
    uint8_t *keep;         // [rows] the decision for each candidate
} mor__route_tmp;

// A custom router, as the session calls it (the session keeps its re-entry rules).
typedef struct {
    int   (*route)(void *owner, const mor_route_batch *b, uint8_t *keep);  // a status
    void   *owner;
    int     wants_confidence;
} mor__router_hook;

// The compute budget: depths of the last tokens in a ring of budget_window entries
// (at most MOR__BUDGET_MAX_WINDOW, model.h).
typedef struct {
    int32_t *ring;                // [MOR__BUDGET_MAX_WINDOW]
    int32_t  n, next;             // entries held, write index
    int32_t  save_n, save_next;   // the ring before the pass in progress (restored on abort)
} mor__budget;

// What a decision reads.
typedef struct {
    const mor_model        *m;
    const mor_exit_policy  *p;        // the session's resolved policy (policy.c)
    mor__rows              *r;
    mor__route_tmp         *tmp;
    const mor__router_hook *hook;     // custom router, or NULL
    int32_t                 T;        // new rows of the pass
    int32_t                 n_ctx;
    float                   lambda;   // FREE: the threshold in force (adaptive or static)
} mor__route_ctx;

// An exit policy. decide() sets keep[i] for the candidate rows act[0..nc) of step k (1: run
// it) and returns a status (a custom router can fail); reads_conf() says whether the policy
// reads an exit head's confidence after step k (k + 1 < n_steps).
typedef struct {
    const char *name;
    int (*decide)(const mor__route_ctx *c, int32_t k, const int32_t *act, int32_t nc, uint8_t *keep);
    int (*reads_conf)(const mor__route_ctx *c, int32_t k);
} mor__exit_rule;

// The rule of a policy MOR_EXIT_* (a checked one: never NULL for those).
const mor__exit_rule *mor__exit_rule_of(int32_t policy);

// Router scores of the candidates act[0..nc) before step k: expert-choice gate and score of
// each, token-choice depth probabilities and pick (at step 0; H^1 kept) and the score of step
// k. xa is used as scratch.
void mor__route_score(const mor__route_ctx *c, mor__work *w, int32_t k, const int32_t *act, int32_t nc);

// Confidence in [0, 1] of V logits by metric MOR_CONF_*; *top receives the argmax.
float mor__confidence(const mor__kernels *k, const float *l, int32_t V, int metric, int32_t *top);
// Cosine between two states of n floats (saturation).
float mor__cosine(const float *a, const float *b, int n);
// Cross-entropy of token tok under logits l (rollback).
float mor__cross_entropy(const float *l, int32_t V, int32_t tok);

// The step cap of the next token under the budget (reserving its ring entry), and the depth
// it actually took, `back` tokens before the last reserved one.
int32_t mor__budget_cap(mor__budget *b, const mor_exit_policy *p, int32_t n_steps);
void    mor__budget_record(mor__budget *b, const mor_exit_policy *p, int32_t back, int32_t depth);

#endif
