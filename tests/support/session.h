// session.h: one session with the usual test settings (header-only), shared by the test
// programs that open sessions: context, batch and flags as given, everything else the
// defaults. Prints the library's message and returns NULL when creation fails.
#ifndef MOR_TEST_SUPPORT_SESSION_H
#define MOR_TEST_SUPPORT_SESSION_H

#include "mor.h"

#include <stdio.h>

static inline mor_session *test_session(const mor_model *m, int32_t n_ctx, int32_t n_batch, uint32_t flags) {
    mor_session_params p;
    mor_session_params_init(&p);
    p.n_ctx = n_ctx;
    p.n_batch = n_batch;
    p.flags = flags;
    mor_session *s = NULL;
    char err[256];
    if (mor_session_create(m, &p, &s, err, sizeof err) != MOR_OK) printf("# session: %s\n", err);
    return s;
}

#endif
