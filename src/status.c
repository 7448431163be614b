// status.c: version, status names, the log callback, error-message formatting, and the
// generic by-name access to parameter structs used by bindings.
#include "internal.h"

#include <math.h>
#include <stdatomic.h>
#include <stdio.h>

#define MOR__STR2(x) #x
#define MOR__STR(x)  MOR__STR2(x)

const char *mor_version(void) {
    return MOR__STR(MOR_VERSION_MAJOR) "." MOR__STR(MOR_VERSION_MINOR) "." MOR__STR(MOR_VERSION_PATCH);
}

uint32_t mor_version_number(void) { return MOR_VERSION_NUMBER; }

const char *mor_status_name(int status) {
    switch (status) {
#define XX(name, value, msg) case value: return "MOR_" #name;
        MOR_STATUS_MAP(XX)
#undef XX
    default: return "MOR_E_UNKNOWN";
    }
}

const char *mor_status_str(int status) {
    switch (status) {
#define XX(name, value, msg) case value: return msg;
        MOR_STATUS_MAP(XX)
#undef XX
    default: return "unknown status";
    }
}

int mor__errf(char *err, size_t n, int status, const char *fmt, ...) {
    if (err && n) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, n, fmt, ap);
        va_end(ap);
    }
    return status;
}

// ---- logging -------------------------------------------------------------------------------
// The callback, its user pointer and the level live in one struct swapped atomically, so a
// message formatted on another thread sees either the old or the new triple, never a mix.

typedef struct {
    mor_log_fn fn;
    void      *user;
    int32_t    max_level;
} log_sink;

static log_sink         log_sinks[2];
static _Atomic(log_sink *) log_current;
static atomic_int       log_next;

void mor_log_set(mor_log_fn fn, void *user_data, int32_t max_level) {
    int i = atomic_fetch_add(&log_next, 1) & 1;
    log_sinks[i] = (log_sink){fn, user_data, max_level};
    atomic_store(&log_current, fn ? &log_sinks[i] : NULL);
}

void mor__log(int level, const char *fmt, ...) {
    log_sink *s = atomic_load(&log_current);
    if (!s || !s->fn || level > s->max_level) return;
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    s->fn(level, buf, s->user);
}

// ---- parameter structs ---------------------------------------------------------------------

void mor_model_params_init(mor_model_params *p) {
    if (!p) return;
    memset(p, 0, sizeof *p);
    p->size = sizeof *p;
    p->kind = MOR_PARAMS_MODEL;
}

void mor_session_params_init(mor_session_params *p) {
    if (!p) return;
    memset(p, 0, sizeof *p);
    p->size = sizeof *p;
    p->kind = MOR_PARAMS_SESSION;
    p->n_ctx = 0;
    p->n_batch = 64;
    p->n_threads = 1;
}

void mor_sampler_params_init(mor_sampler_params *p) {
    if (!p) return;
    memset(p, 0, sizeof *p);
    p->size = sizeof *p;
    p->kind = MOR_PARAMS_SAMPLER;
    p->temperature = 0.0f;
    p->top_k = 40;
    p->top_p = 0.95f;
    p->min_p = 0.05f;
    p->repeat_penalty = 1.0f;
    p->repeat_last_n = 64;
    p->seed = 0x5eed;
}

void mor_exit_policy_init(mor_exit_policy *p) {
    if (!p) return;
    memset(p, 0, sizeof *p);
    p->size = sizeof *p;
    p->kind = MOR_PARAMS_EXIT;
    p->policy = -1;  // "the model's default", resolved by the session
    p->depth = 0;
    p->threshold = 0.5f;
    p->min_depth = 0;
    p->metric = MOR_CONF_TOP2_GAP;
    p->shallow = 1;
    p->kv = MOR_KV_AUTO;
    p->budget_window = 32;
}

void mor_sched_params_init(mor_sched_params *p) {
    if (!p) return;
    memset(p, 0, sizeof *p);
    p->size = sizeof *p;
    p->kind = MOR_PARAMS_SCHED;
    p->max_batch = 64;
    p->n_threads = 1;
    p->mode = MOR_SCHED_CONTINUOUS;
    p->prompt_chunk = 16;
}


#define FD(k, T, f, t) {k, #f, offsetof(T, f), t}
static const mor__field fields[] = {
    FD(MOR_PARAMS_MODEL, mor_model_params, flags, MOR__F_U32),
    FD(MOR_PARAMS_SESSION, mor_session_params, n_ctx, MOR__F_I32),
    FD(MOR_PARAMS_SESSION, mor_session_params, n_batch, MOR__F_I32),
    FD(MOR_PARAMS_SESSION, mor_session_params, n_threads, MOR__F_I32),
    FD(MOR_PARAMS_SESSION, mor_session_params, flags, MOR__F_U32),
    FD(MOR_PARAMS_SAMPLER, mor_sampler_params, temperature, MOR__F_F32),
    FD(MOR_PARAMS_SAMPLER, mor_sampler_params, top_k, MOR__F_I32),
    FD(MOR_PARAMS_SAMPLER, mor_sampler_params, top_p, MOR__F_F32),
    FD(MOR_PARAMS_SAMPLER, mor_sampler_params, min_p, MOR__F_F32),
    FD(MOR_PARAMS_SAMPLER, mor_sampler_params, repeat_penalty, MOR__F_F32),
    FD(MOR_PARAMS_SAMPLER, mor_sampler_params, repeat_last_n, MOR__F_I32),
    FD(MOR_PARAMS_SAMPLER, mor_sampler_params, seed, MOR__F_U64),
    FD(MOR_PARAMS_EXIT, mor_exit_policy, policy, MOR__F_I32),
    FD(MOR_PARAMS_EXIT, mor_exit_policy, depth, MOR__F_I32),
    FD(MOR_PARAMS_EXIT, mor_exit_policy, threshold, MOR__F_F32),
    FD(MOR_PARAMS_EXIT, mor_exit_policy, min_depth, MOR__F_I32),
    FD(MOR_PARAMS_EXIT, mor_exit_policy, metric, MOR__F_I32),
    FD(MOR_PARAMS_EXIT, mor_exit_policy, decay_tau, MOR__F_F32),
    FD(MOR_PARAMS_EXIT, mor_exit_policy, decay_len, MOR__F_I32),
    FD(MOR_PARAMS_EXIT, mor_exit_policy, shallow, MOR__F_I32),
    FD(MOR_PARAMS_EXIT, mor_exit_policy, adaptive, MOR__F_I32),
    FD(MOR_PARAMS_EXIT, mor_exit_policy, kv, MOR__F_I32),
    FD(MOR_PARAMS_EXIT, mor_exit_policy, budget, MOR__F_F32),
    FD(MOR_PARAMS_EXIT, mor_exit_policy, budget_window, MOR__F_I32),
    FD(MOR_PARAMS_EXIT, mor_exit_policy, rollback, MOR__F_F32),
    FD(MOR_PARAMS_SESSION, mor_session_params, max_bytes, MOR__F_I64),
    FD(MOR_PARAMS_SCHED, mor_sched_params, max_batch, MOR__F_I32),
    FD(MOR_PARAMS_SCHED, mor_sched_params, n_threads, MOR__F_I32),
    FD(MOR_PARAMS_SCHED, mor_sched_params, kv_budget, MOR__F_I64),
    FD(MOR_PARAMS_SCHED, mor_sched_params, mode, MOR__F_I32),
    FD(MOR_PARAMS_SCHED, mor_sched_params, prompt_chunk, MOR__F_I32),
};
#undef FD

const mor__field *mor__params_fields(size_t *n) {
    *n = sizeof fields / sizeof fields[0];
    return fields;
}

size_t mor_params_size(uint32_t kind) {
    switch (kind) {
    case MOR_PARAMS_MODEL: return sizeof(mor_model_params);
    case MOR_PARAMS_SESSION: return sizeof(mor_session_params);
    case MOR_PARAMS_SAMPLER: return sizeof(mor_sampler_params);
    case MOR_PARAMS_EXIT: return sizeof(mor_exit_policy);
    case MOR_PARAMS_SCHED: return sizeof(mor_sched_params);
    default: return 0;
    }
}

int mor_params_init(void *p, uint32_t kind) {
    if (!p) return MOR_E_INVALID;
    switch (kind) {
    case MOR_PARAMS_MODEL: mor_model_params_init(p); return MOR_OK;
    case MOR_PARAMS_SESSION: mor_session_params_init(p); return MOR_OK;
    case MOR_PARAMS_SAMPLER: mor_sampler_params_init(p); return MOR_OK;
    case MOR_PARAMS_EXIT: mor_exit_policy_init(p); return MOR_OK;
    case MOR_PARAMS_SCHED: mor_sched_params_init(p); return MOR_OK;
    default: return MOR_E_INVALID;
    }
}

static const mor__field *find_field(const void *p, const char *name) {
    uint32_t hdr[2];
    memcpy(hdr, p, sizeof hdr);
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        if (fields[i].kind == hdr[1] && strcmp(fields[i].name, name) == 0 &&
            fields[i].offset + (fields[i].type >= MOR__F_U64 ? 8 : 4) <= hdr[0])
            return &fields[i];
    return NULL;
}

int mor_params_set(void *p, const char *field, double v) {
    if (!p || !field || isnan(v)) return MOR_E_INVALID;
    if (!mor_params_size(((uint32_t *)p)[1])) return MOR_E_INVALID;
    const mor__field *f = find_field(p, field);
    if (!f) return MOR_E_NOT_FOUND;
    char *at = (char *)p + f->offset;
    switch (f->type) {
    case MOR__F_U32: {
        if (v < 0 || v > 4294967295.0 || v != floor(v)) return MOR_E_INVALID;
        uint32_t x = (uint32_t)v;
        memcpy(at, &x, 4);
        return MOR_OK;
    }
    case MOR__F_I32: {
        if (v < -2147483648.0 || v > 2147483647.0 || v != floor(v)) return MOR_E_INVALID;
        int32_t x = (int32_t)v;
        memcpy(at, &x, 4);
        return MOR_OK;
    }
    case MOR__F_F32: {
        float x = (float)v;
        memcpy(at, &x, 4);
        return MOR_OK;
    }
    case MOR__F_U64: {
        if (v < 0 || v >= 18446744073709551616.0 || v != floor(v)) return MOR_E_INVALID;
        uint64_t x = (uint64_t)v;
        memcpy(at, &x, 8);
        return MOR_OK;
    }
    case MOR__F_I64: {
        if (v < -9223372036854775808.0 || v >= 9223372036854775808.0 || v != floor(v)) return MOR_E_INVALID;
        int64_t x = (int64_t)v;
        memcpy(at, &x, 8);
        return MOR_OK;
    }
    }
    return MOR_E_INTERNAL;
}

int mor_params_get(const void *p, const char *field, double *v) {
    if (!p || !field || !v) return MOR_E_INVALID;
    if (!mor_params_size(((const uint32_t *)p)[1])) return MOR_E_INVALID;
    const mor__field *f = find_field(p, field);
    if (!f) return MOR_E_NOT_FOUND;
    const char *at = (const char *)p + f->offset;
    switch (f->type) {
    case MOR__F_U32: { uint32_t x; memcpy(&x, at, 4); *v = x; return MOR_OK; }
    case MOR__F_I32: { int32_t x; memcpy(&x, at, 4); *v = x; return MOR_OK; }
    case MOR__F_F32: { float x; memcpy(&x, at, 4); *v = x; return MOR_OK; }
    case MOR__F_U64: { uint64_t x; memcpy(&x, at, 8); *v = (double)x; return MOR_OK; }
    case MOR__F_I64: { int64_t x; memcpy(&x, at, 8); *v = (double)x; return MOR_OK; }
    }
    return MOR_E_INTERNAL;
}
