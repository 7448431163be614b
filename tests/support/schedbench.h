// schedbench.h: the many-sessions benchmark of mor-bench: aggregate generated tokens/s of
// the scheduler (continuous depth-wise batching) against its two baselines, stepping each
// session alone in turn (sequential) and static batching (a batch runs to its deepest token
// before new work is admitted), with the mean batch occupancy. Header-only, included by
// tools/mor-bench.c.
#ifndef MOR_SCHEDBENCH_H
#define MOR_SCHEDBENCH_H

#include "mor.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double sb_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

// A router giving each token a pseudo-random depth in 1..n_steps (a stand-in for real exit
// decisions on random-weight models, so the depths vary as they do with a trained router).
static int32_t sb_random_depth(void *user, const mor_route_batch *b, uint8_t *keep) {
    (void)user;
    for (int32_t i = 0; i < b->n_tokens; i++) {
        uint32_t h = (uint32_t)b->positions[i] * 2654435761u ^ (uint32_t)(uintptr_t)user;
        h ^= h >> 15;
        h *= 2246822519u;
        h ^= h >> 13;
        keep[i] = b->step < (int32_t)(1 + h % (uint32_t)b->n_steps);
    }
    return 0;
}

// Skewed depths, as confidence-based early exit gives them (most tokens are easy): each step
// after the first is taken with probability 0.3 (depth 1: 70%, 2: 21%, 3: 9% of 3).
static int32_t sb_skewed_depth(void *user, const mor_route_batch *b, uint8_t *keep) {
    for (int32_t i = 0; i < b->n_tokens; i++) {
        uint32_t h = ((uint32_t)b->positions[i] * 2654435761u + (uint32_t)b->step * 40503u) ^ (uint32_t)(uintptr_t)user;
        h ^= h >> 15;
        h *= 2246822519u;
        h ^= h >> 13;
        keep[i] = b->step == 0 || h % 100 < 30;
    }
    return 0;
}

typedef struct {
    double tok_s;       // generated tokens per second, all sessions together
    double occupancy;   // mean token rows per batched layer
    double head_occ;    // mean rows per batched output-head product
    double mean_depth;
    double seconds;
} sb_result;

// depth_mode: 0 = full depth, 1 = random depths (custom router), 2 = the model's default
// policy (its router), 3 = confidence exit at 0.3, 4 = skewed random depths (custom router).
static int sb_run(const mor_model *m, int n_sessions, int n_threads, int mode, int depth_mode, int prompt, int gen,
                  sb_result *out) {
    mor_sched_params sp;
    mor_sched_params_init(&sp);
    sp.max_batch = 64;
    sp.n_threads = n_threads;
    sp.mode = mode;
    mor_sched *sc;
    char err[256];
    if (mor_sched_create(m, &sp, &sc, err, sizeof err)) {
        fprintf(stderr, "schedbench: %s\n", err);
        return -1;
    }
    mor_session **ss = calloc((size_t)n_sessions, sizeof *ss);
    int32_t V = (int32_t)mor_model_get_int(m, MOR_INFO_N_VOCAB);
    int32_t *pr = malloc(sizeof(int32_t) * (size_t)prompt);
    for (int i = 0; i < n_sessions; i++) {
        mor_session_params p;
        mor_session_params_init(&p);
        p.n_ctx = prompt + gen + 8;
        p.n_batch = 16;
        if (mor_session_create(m, &p, &ss[i], err, sizeof err)) {
            fprintf(stderr, "schedbench: %s\n", err);
            return -1;
        }
        if (depth_mode == 1) mor_session_set_router_fn(ss[i], sb_random_depth, (void *)(uintptr_t)(i + 1), 0);
        if (depth_mode == 4) mor_session_set_router_fn(ss[i], sb_skewed_depth, (void *)(uintptr_t)(i + 1), 0);
        if (depth_mode == 3) {
            mor_exit_policy ep;
            mor_exit_policy_init(&ep);
            ep.policy = MOR_EXIT_CONFIDENCE;
            ep.threshold = 0.3f;
            ep.min_depth = 1;
            mor_session_set_exit_policy(ss[i], &ep);
        }
        if (depth_mode == 0) {
            mor_exit_policy ep;
            mor_exit_policy_init(&ep);
            ep.policy = MOR_EXIT_FULL;
            mor_session_set_exit_policy(ss[i], &ep);
        }
        for (int k = 0; k < prompt; k++) pr[k] = (int32_t)((uint32_t)(i * 7919 + k * 104729) % (uint32_t)V);
        mor_sched_add(sc, ss[i]);
        mor_sched_submit(sc, ss[i], pr, prompt, gen);
    }
    int64_t n_gen = 0;
    double t0 = sb_now();
    while (mor_sched_pending(sc) > 0) {
        mor_sched_step(sc);
        mor_session *who;
        int32_t tok, st;
        while (mor_sched_poll(sc, &who, &tok, &st) == MOR_OK) n_gen += tok >= 0;
    }
    double dt = sb_now() - t0;
    double depth = 0;
    for (int i = 0; i < n_sessions; i++) {
        mor_session_stats st;
        memset(&st, 0, sizeof st);
        st.size = sizeof st;
        mor_session_get_stats(ss[i], &st);
        depth += st.mean_depth;
    }
    out->tok_s = (double)n_gen / dt;
    out->seconds = dt;
    out->mean_depth = depth / n_sessions;
    mor_sched_counters k;
    k.size = sizeof k;
    mor_sched_get_counters(sc, &k);
    out->occupancy = k.layer_runs ? (double)k.layer_rows / (double)k.layer_runs : 0;
    out->head_occ = k.head_runs ? (double)k.head_rows / (double)k.head_runs : 0;
    for (int i = 0; i < n_sessions; i++) mor_session_free(ss[i]);
    free(ss);
    free(pr);
    mor_sched_free(sc);
    return 0;
}

#endif
