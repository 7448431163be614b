// work.c: compute workspaces (work.h) and the threaded matrix product over them.
#include "work.h"

void mor__work_plan(mor__plan *c, mor__work *w, const mor__hparams *hp, int32_t rows, size_t att_len, int n_threads) {
    const uint64_t nb = (uint64_t)rows, d = (uint64_t)hp->n_embd, kv = (uint64_t)hp->n_head_kv * hp->head_dim,
                   q = (uint64_t)hp->n_head * hp->head_dim, rank = (uint64_t)MOR__MAX(hp->lora_rank, 1);
    const uint64_t wide = MOR__MAX(MOR__MAX((uint64_t)hp->n_ff, 2 * d), MOR__MAX(q, kv));
    w->xb = mor__plan_take(c, nb * d, sizeof(float), 1);
    w->q = mor__plan_take(c, nb * q, sizeof(float), 1);
    w->k = mor__plan_take(c, nb * kv, sizeof(float), 1);
    w->v = mor__plan_take(c, nb * kv, sizeof(float), 1);
    w->ao = mor__plan_take(c, nb * q, sizeof(float), 1);
    w->hb = mor__plan_take(c, nb * wide, sizeof(float), 1);
    w->hb2 = mor__plan_take(c, nb * wide, sizeof(float), 1);
    w->tmp = mor__plan_take(c, nb * wide, sizeof(float), 1);
    w->lora = mor__plan_take(c, nb * rank, sizeof(float), 1);
    if (hp->adapt_len)  // an adaption prompt's scores and its head's output (layer.c)
        att_len = MOR__MAX(att_len, (size_t)hp->adapt_len + (size_t)hp->head_dim);
    w->att_stride = att_len;
    w->att = mor__plan_take(c, (uint64_t)att_len * (uint64_t)n_threads, sizeof(float), 1);
    w->row_stride = (size_t)((MOR__MAX(wide, rank) + 15) & ~(uint64_t)15);
    w->row = mor__plan_take(c, (uint64_t)w->row_stride * (uint64_t)n_threads, sizeof(float), 1);
    w->rows = rows;
}

typedef struct {
    mor__work      *w;
    const mor__mat *W;
    const float    *x;
    int64_t         T;
    float          *y;
} mm_task;

static void mm_part(void *c, int part, int n_parts, int tid) {
    const mm_task *t = c;
    long r0, r1;
    mor__split((long)t->W->rows, part, n_parts, &r0, &r1);
    if (r0 < r1)
        t->w->kern->matmul[t->W->type](t->W->data, t->W->cols, r0, r1, t->x, t->T, t->W->cols, t->y,
                                                          t->W->rows, t->w->row + (size_t)tid * t->w->row_stride);
}

// Rows split among the workspace's threads; small products run on the caller's thread alone
// (waking workers costs more than they save).
void mor__matmul(mor__work *w, const mor__mat *W, const float *x, int64_t T, float *y) {
    mm_task t = {w, W, x, T, y};
    const int quant = mor__dtype_quantized(W->type);
    if (W->rows * W->cols * T < 32768 || mor__pool_size(w->pool) == 1) mm_part(&t, 0, 1, 0);
    else mor__pool_run_parts(w->pool, mm_part, &t, quant ? 1 : 4);  // each part quantizes all of x
}
