// layer.h: one transformer layer over the rows of one or several sessions (layer.c).
#ifndef MOR_LAYER_H
#define MOR_LAYER_H

#include "kv.h"

// One session's rows for one unrolled layer: n rows xr (updated in place), which are the pass
// rows idx[0..n); the K/V of the layer go to (and attention reads) the session's cache.
typedef struct {
    mor__kv       *kv;
    const int32_t *tpos;      // [pass rows] absolute position of each pass row
    const float   *rope_cos;  // [pass rows][head_dim / 2]
    const float   *rope_sin;
    int64_t       *evals;     // layer evaluations, counted per row
    int32_t        l;         // unrolled layer
    float         *xr;
    const int32_t *idx;
    int32_t        n;
} mor__layer_rows;

// A layer on the rows of several sessions; sets of rows whose weights are the same memory
// share every projection. The rows must fit w->rows.
void mor__run_layers(mor__work *w, const mor_model *m, const mor__layer_rows *rows, int n);

#endif
