// stop.c: stop strings over a stream of text pieces (mor_stop_*). The matcher holds back the
// longest tail of the text seen so far that could still begin a stop string, and emits the
// rest; a match ends the stream at the stop string's first byte.
//
// The text a push works on is the held tail followed by the new piece, read in place (no
// copy): byte i of it is held[i] for i < n_held, else piece[i - n_held].
#include "internal.h"

#define MOR__STOP_MAX_LEN 4096  // longest stop string accepted

struct mor_stop {
    mor_allocator alloc;
    int32_t       n;        // stop strings
    char        **str;      // [n] copies, NUL-terminated
    size_t       *len;      // [n]
    size_t        max_len;
    char         *held;     // [max_len] the tail that may begin a stop string
    size_t        n_held;
    int32_t       matched;  // index of the stop string found, or -1
};

int mor_stop_create(const char *const *stops, int32_t n, const mor_allocator *alloc, mor_stop **out) {
    if (!out) return MOR_E_INVALID;
    *out = NULL;
    if (n < 0 || (n > 0 && !stops)) return MOR_E_INVALID;
    for (int32_t i = 0; i < n; i++) {
        if (!stops[i]) return MOR_E_INVALID;
        size_t l = strlen(stops[i]);
        if (l == 0 || l > MOR__STOP_MAX_LEN) return MOR_E_INVALID;
    }
    mor_allocator a = {0};
    if (alloc) a = *alloc;
    mor_stop *st = mor__alloc(&a, 1, sizeof *st, 1);
    if (!st) return MOR_E_NOMEM;
    st->alloc = a;
    st->matched = -1;
    st->n = n;
    st->str = mor__alloc(&a, (size_t)MOR__MAX(n, 1), sizeof(char *), 1);
    st->len = mor__alloc(&a, (size_t)MOR__MAX(n, 1), sizeof(size_t), 1);
    int ok = st->str && st->len;
    for (int32_t i = 0; ok && i < n; i++) {
        st->len[i] = strlen(stops[i]);
        st->str[i] = mor__strndup(&a, stops[i], st->len[i]);
        ok = st->str[i] != NULL;
        st->max_len = MOR__MAX(st->max_len, st->len[i]);
    }
    if (ok) ok = (st->held = mor__alloc(&a, MOR__MAX(st->max_len, 1), 1, 0)) != NULL;
    if (!ok) {
        mor_stop_free(st);
        return MOR_E_NOMEM;
    }
    *out = st;
    return MOR_OK;
}

void mor_stop_free(mor_stop *st) {
    if (!st) return;
    const mor_allocator a = st->alloc;
    for (int32_t i = 0; st->str && i < st->n; i++) mor__free(&a, st->str[i]);
    mor__free(&a, st->str);
    mor__free(&a, st->len);
    mor__free(&a, st->held);
    mor__free(&a, st);
}

void mor_stop_reset(mor_stop *st) {
    if (!st) return;
    st->n_held = 0;
    st->matched = -1;
}

static inline char at(const mor_stop *st, const char *piece, size_t i) {
    return i < st->n_held ? st->held[i] : piece[i - st->n_held];
}

// 1 if stop string k occurs at byte p of the text (p + len[k] <= total).
static int occurs(const mor_stop *st, const char *piece, size_t p, int32_t k) {
    for (size_t j = 0; j < st->len[k]; j++)
        if (at(st, piece, p + j) != st->str[k][j]) return 0;
    return 1;
}

// Copies bytes [0, k) of the text to out and keeps bytes [k, total) as the held tail.
static void emit(mor_stop *st, const char *piece, size_t total, size_t k, char *out) {
    for (size_t i = 0; i < k; i++) out[i] = at(st, piece, i);
    // The new tail lies at or after k; moving it to the front of `held` reads bytes that are
    // either further along in held (i >= k) or in the piece, so a forward copy is safe.
    size_t nt = total - k;
    for (size_t i = 0; i < nt; i++) st->held[i] = at(st, piece, k + i);
    st->n_held = nt;
}

int mor_stop_push(mor_stop *st, const char *piece, size_t len, char *out, size_t capacity, size_t *n_out,
                  int32_t *matched) {
    if (n_out) *n_out = 0;
    if (matched) *matched = st ? st->matched : -1;
    if (!st || !n_out || !matched || (len && !piece) || (capacity && !out)) return MOR_E_INVALID;
    if (st->matched >= 0) return MOR_OK;  // the stream ended at a stop string: nothing more
    if (len > SIZE_MAX - st->n_held) return MOR_E_INVALID;
    const size_t total = st->n_held + len;
    // The earliest stop string in the text (the first listed on a tie).
    size_t best = SIZE_MAX;
    int32_t who = -1;
    for (int32_t k = 0; k < st->n; k++)
        for (size_t p = 0; p + st->len[k] <= total && p < best; p++)
            if (occurs(st, piece, p, k)) {
                best = p, who = k;
                break;
            }
    if (who >= 0) {
        if (capacity < best) return *n_out = best, MOR_E_BUFFER_SMALL;
        emit(st, piece, total, best, out);
        st->n_held = 0;
        st->matched = who;
        *n_out = best;
        *matched = who;
        return MOR_OK;
    }
    // No stop string: hold the longest tail that is a proper prefix of one.
    size_t hold = 0;
    for (int32_t k = 0; k < st->n; k++)
        for (size_t h = MOR__MIN(st->len[k] - 1, total); h > hold; h--) {
            size_t j = 0;
            while (j < h && at(st, piece, total - h + j) == st->str[k][j]) j++;
            if (j == h) {
                hold = h;
                break;
            }
        }
    size_t k = total - hold;
    if (capacity < k) return *n_out = k, MOR_E_BUFFER_SMALL;
    emit(st, piece, total, k, out);
    *n_out = k;
    return MOR_OK;
}

int mor_stop_flush(mor_stop *st, char *out, size_t capacity, size_t *n_out) {
    if (n_out) *n_out = 0;
    if (!st || !n_out || (capacity && !out)) return MOR_E_INVALID;
    if (capacity < st->n_held) return *n_out = st->n_held, MOR_E_BUFFER_SMALL;
    if (st->n_held) memcpy(out, st->held, st->n_held);
    *n_out = st->n_held;
    st->n_held = 0;
    return MOR_OK;
}
