// kv.c: the K/V cache of a session (kv.h): slots, insertion and lookup, truncation, the slot
// map of KV sharing, state propagation and the cache's part of the state format.
//
// Propagation recomputes a layer's K and V the way the layer does (layer.c): norm, projection,
// LoRA, the architecture's biases, RoPE.
#include "kv.h"

void mor__kv_plan(mor__plan *c, mor__kv *kv, int32_t n_layer, int32_t n_ctx, int32_t kv_dim, int f16) {
    const size_t el = f16 ? sizeof(uint16_t) : sizeof(float);
    const uint64_t per = (uint64_t)n_ctx * (uint64_t)kv_dim;
    kv->n_layer = n_layer, kv->n_ctx = n_ctx, kv->kv_dim = kv_dim, kv->f16 = f16;
    kv->slots = mor__plan_take(c, (uint64_t)n_layer, sizeof *kv->slots, 1);
    kv->slot_of = mor__plan_take(c, (uint64_t)n_layer, sizeof *kv->slot_of, 1);
    kv->slot_write = mor__plan_take(c, (uint64_t)n_layer, 1, 1);
    for (int32_t l = 0; l < n_layer && !c->fail; l++) {
        void *k = mor__plan_take(c, per, el, 0), *v = mor__plan_take(c, per, el, 0);
        int32_t *pos = mor__plan_take(c, (uint64_t)n_ctx, sizeof(int32_t), 0);
        if (!kv->slots) continue;  // counting
        mor__kv_slot *sl = &kv->slots[l];
        sl->pos = pos;
        if (f16) sl->k16 = k, sl->v16 = v;
        else sl->k = k, sl->v = v;
    }
}

void mor__kv_map(mor__kv *kv, const mor_model *m, int share) {
    for (int32_t l = 0; l < m->hp.n_layer; l++) {
        const mor__layer *ly = &m->layers[l];
        kv->slot_of[l] = l;
        kv->slot_write[l] = 1;
        if (!share || !ly->in_middle || ly->rec == 0) continue;
        for (int32_t j = 0; j < l; j++)
            if (m->layers[j].stored == ly->stored && m->layers[j].rec == 0 && m->layers[j].in_middle) {
                kv->slot_of[l] = j;
                kv->slot_write[l] = 0;
                break;
            }
    }
}

int32_t mor__kv_visible(const mor__kv_slot *sl, int32_t p) {
    int32_t lo = 0, hi = sl->len;
    while (lo < hi) {
        int32_t mid = (lo + hi) / 2;
        if (sl->pos[mid] <= p) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

void mor__kv_put(mor__kv_slot *sl, int32_t pos, const float *k, const float *v, int kv_dim) {
    const int half = sl->k16 != NULL;
    size_t row = (size_t)kv_dim * (half ? sizeof(uint16_t) : sizeof(float));
    char *K = half ? (char *)sl->k16 : (char *)sl->k, *V = half ? (char *)sl->v16 : (char *)sl->v;
    int32_t e = sl->len;
    if (e > 0 && sl->pos[e - 1] >= pos) {
        e = mor__kv_visible(sl, pos - 1);
        if (!(e < sl->len && sl->pos[e] == pos)) {
            memmove(K + (size_t)(e + 1) * row, K + (size_t)e * row, (size_t)(sl->len - e) * row);
            memmove(V + (size_t)(e + 1) * row, V + (size_t)e * row, (size_t)(sl->len - e) * row);
            memmove(sl->pos + e + 1, sl->pos + e, (size_t)(sl->len - e) * sizeof(int32_t));
            sl->len++;
        }
    } else {
        sl->len++;
    }
    if (half) {
        uint16_t *kd = sl->k16 + (size_t)e * kv_dim, *vd = sl->v16 + (size_t)e * kv_dim;
        for (int i = 0; i < kv_dim; i++) kd[i] = mor__f32_to_f16(k[i]), vd[i] = mor__f32_to_f16(v[i]);
    } else {
        memcpy(sl->k + (size_t)e * kv_dim, k, row);
        memcpy(sl->v + (size_t)e * kv_dim, v, row);
    }
    sl->pos[e] = pos;
}

void mor__kv_truncate(mor__kv *kv, int32_t n_keep) {
    for (int32_t l = 0; l < kv->n_layer; l++) {
        mor__kv_slot *sl = &kv->slots[l];
        while (sl->len > 0 && sl->pos[sl->len - 1] >= n_keep) sl->len--;
    }
}

int64_t mor__kv_entry_bytes(const mor__kv *kv) {
    return (int64_t)kv->kv_dim * 2 * (kv->f16 ? (int64_t)sizeof(uint16_t) : (int64_t)sizeof(float));
}

int64_t mor__kv_bytes(const mor__kv *kv) {
    int64_t n = 0;
    for (int32_t l = 0; l < kv->n_layer; l++) n += kv->slots[l].len;
    return n * mor__kv_entry_bytes(kv);
}

void mor__kv_propagate(mor__kv *kv, mor__work *w, const mor_model *m, int32_t l, const float *h, int32_t pos,
                       const float *cos, const float *sin) {
    const mor__hparams *hp = &m->hp;
    const mor__layer *ly = &m->layers[l];
    const int kv_dim = hp->n_head_kv * hp->head_dim;
    if (!kv->slot_write[l]) return;
    w->kern->rmsnorm(w->xb, h, ly->attn_norm, hp->n_embd, hp->rms_eps);
    mor__matmul(w, &ly->w[MOR__ROLE_K], w->xb, 1, w->k);
    mor__matmul(w, &ly->w[MOR__ROLE_V], w->xb, 1, w->v);
    // LoRA, DoRA row scales and biases, in the order the layer applies them
    for (int role = MOR__ROLE_K; role <= MOR__ROLE_V; role++) {
        float *y = role == MOR__ROLE_K ? w->k : w->v;
        const float *ds = ly->dora[role], *bias = ly->bias[role];
        if (ly->lora_a[role].data) {
            mor__matmul(w, &ly->lora_a[role], w->xb, 1, w->lora);
            mor__matmul(w, &ly->lora_b[role], w->lora, 1, w->tmp);
            for (int i = 0; i < kv_dim; i++) y[i] += hp->lora_scale * w->tmp[i];
        }
        if (ds)
            for (int i = 0; i < kv_dim; i++) y[i] *= ds[i];
        if (bias)
            for (int i = 0; i < kv_dim; i++) y[i] += bias[i];
    }
    w->kern->rope(w->k, hp->n_head_kv, hp->head_dim, cos, sin, hp->rope_neox);
    mor__kv_put(&kv->slots[l], pos, w->k, w->v, kv_dim);
}

// ---- state format ------------------------------------------------------------------------

void mor__kv_save(const mor__kv *kv, mor__wbuf *w) {
    for (int32_t l = 0; l < kv->n_layer; l++) {
        const mor__kv_slot *sl = &kv->slots[l];
        const size_t len = (size_t)sl->len, n = len * (size_t)kv->kv_dim;
        mor__put_u32(w, (uint32_t)len);
        mor__put_arr32(w, sl->pos, len);
        if (kv->f16) {
            mor__put_arr16(w, sl->k16, n);
            mor__put_arr16(w, sl->v16, n);
        } else {
            mor__put_arr32(w, sl->k, n);
            mor__put_arr32(w, sl->v, n);
        }
    }
}

int mor__kv_check(const mor__kv *kv, mor__rbuf *r, uint32_t n_past, char *err, size_t err_n) {
    for (int32_t l = 0; l < kv->n_layer; l++) {
        uint32_t len = mor__get_u32(r);
        if (r->bad || len > n_past)
            return mor__errf(err, err_n, MOR_E_STATE, "state: slot %d has %u entries (at most %u)", l, len, n_past);
        int32_t prev = -1;
        for (uint32_t e = 0; e < len; e++) {
            int32_t p = (int32_t)mor__get_u32(r);
            if (r->bad || p <= prev || p >= (int32_t)n_past)
                return mor__errf(err, err_n, MOR_E_STATE, "state: slot %d: positions not increasing within 0..%u", l,
                                 n_past);
            prev = p;
        }
        const size_t n = (size_t)len * (size_t)kv->kv_dim;
        size_t words = kv->f16 ? 2 * ((n + 1) / 2) : 2 * n;
        if ((r->n - r->off) / 4 < words) return mor__errf(err, err_n, MOR_E_STATE, "state: slot %d truncated", l);
        r->off += words * 4;
    }
    return MOR_OK;
}

void mor__kv_load(mor__kv *kv, mor__rbuf *r) {
    for (int32_t l = 0; l < kv->n_layer; l++) {
        mor__kv_slot *sl = &kv->slots[l];
        uint32_t len = mor__get_u32(r);
        const size_t n = (size_t)len * (size_t)kv->kv_dim;
        mor__get_arr32(r, sl->pos, len);
        if (kv->f16) {
            mor__get_arr16(r, sl->k16, n);
            mor__get_arr16(r, sl->v16, n);
        } else {
            mor__get_arr32(r, sl->k, n);
            mor__get_arr32(r, sl->v, n);
        }
        sl->len = (int32_t)len;
    }
}
