// work.h: a compute workspace: the scratch rows a transformer layer runs in, the per-thread
// scratch of the kernels, and the threads. A session owns one sized for its n_batch rows; a
// scheduler owns one sized for the rows of its whole batch. Both are planned by
// mor__work_plan(), so the two sizes are one rule.
#ifndef MOR_WORK_H
#define MOR_WORK_H

#include "alloc.h"
#include "kernels.h"
#include "model.h"
#include "thread.h"

typedef struct mor__work {
    float              *xb;           // [rows][n_embd] normalized input of a projection
    float              *q, *ao;       // [rows][n_head * head_dim] queries, attention output
    float              *k, *v;        // [rows][n_head_kv * head_dim] new keys and values
    float              *hb, *hb2;     // [rows][wide] MLP gate and up (wide: see mor__work_plan)
    float              *tmp;          // [rows][wide] a LoRA product before it is added
    float              *lora;         // [rows][lora rank] A x of a LoRA pair
    float              *att;          // [threads][att_stride] attention scores
    size_t              att_stride;   // entries a row may attend to
    float              *row;          // [threads][row_stride] weight rows converted to F32
    size_t              row_stride;
    mor__pool          *pool;
    const mor__kernels *kern;
    int32_t             rows;         // row capacity of the buffers
} mor__work;

// Plans the buffers of a workspace of `rows` rows attending to up to att_len entries with
// n_threads threads: counts their bytes, or carves them from c->base (alloc.h). The pool and
// kernel table are the caller's to set. wide = max(n_ff, 2 n_embd, q width, kv width): the
// MLP and the MLP router's hidden layer use hb.
void mor__work_plan(mor__plan *c, mor__work *w, const mor__hparams *hp, int32_t rows, size_t att_len, int n_threads);

// y[T][W.rows] = x[T][W.cols] * W^T with the workspace's threads.
void mor__matmul(mor__work *w, const mor__mat *W, const float *x, int64_t T, float *y);

#endif
