// tokenizer-bpe.c: the tokenize driver (special-token partition), the SentencePiece BPE merge
// loop and the byte-level BPE merge loop.
//
// SentencePiece ("llama"): the text (with a dummy-prefix space where the vocabulary asks for
// one) has its spaces replaced by U+2581 and is split into characters; then, repeatedly, the
// adjacent pair whose concatenation is a token with the highest score is merged (ties: the
// leftmost pair). A final symbol that is not a token is written as byte-fallback tokens
// <0xNN>, one per byte; a byte without one becomes the unknown token, and with no unknown
// token either the text is refused (MOR_E_ENCODING).
//
// Byte-level BPE ("gpt2"): the pre-tokenizer splits the text into words; each byte of a word
// starts as the token of its GPT-2 byte character; then, repeatedly, the adjacent pair with
// the lowest merge rank is merged (ties: leftmost). A byte with neither its character's token
// nor a byte token <0xNN> refuses the text (MOR_E_ENCODING) before any work is done.
#include "tokenizer.h"
#include "unicode.h"

typedef struct {
    int32_t  prev, next;
    uint32_t start, len;  // SPM: bytes of the escaped text
    int32_t  id;          // BPE: current token
} sym;

typedef struct {
    float    score;   // SPM: higher first; BPE: rank, lower first (stored negated)
    int32_t  left, right;
    uint32_t size;    // SPM: bytes of the pair
    int32_t  lid, rid, res;  // BPE
} bigram;

struct mor__tok_ws {
    char     *buf;     // SPM escaped text / BPE encoded word
    size_t    buf_cap;
    sym      *syms;
    size_t    syms_cap;
    bigram   *heap;
    size_t    heap_n, heap_cap;
    uint32_t *cps;
    uint8_t  *fl;
    uint32_t *offs;    // byte offset of each code point (+ end)
    uint32_t *ends, *tmp;
    size_t    cp_cap;
    const mor_allocator *al;
};

mor__tok_ws *mor__tok_ws_create(const mor_allocator *al) {
    mor__tok_ws *ws = mor__alloc(al, 1, sizeof *ws, 1);
    if (ws) ws->al = al;
    return ws;
}

void mor__tok_ws_free(mor__tok_ws *ws) {
    if (!ws) return;
    mor__free(ws->al, ws->buf);
    mor__free(ws->al, ws->syms);
    mor__free(ws->al, ws->heap);
    mor__free(ws->al, ws->cps);
    mor__free(ws->al, ws->fl);
    mor__free(ws->al, ws->offs);
    mor__free(ws->al, ws->ends);
    mor__free(ws->al, ws->tmp);
    mor__free(ws->al, ws);
}

#define GROW(ptr, cap, need)                                                   \
    do {                                                                       \
        if ((need) > (cap)) {                                                  \
            size_t c_ = (cap) ? (cap) : 64;                                    \
            while (c_ < (need)) c_ *= 2;                                       \
            void *p_ = mor__realloc(ws->al, (ptr), (cap), c_, sizeof *(ptr)); \
            if (!p_) return MOR_E_NOMEM;                                       \
            (ptr) = p_;                                                        \
            (cap) = c_;                                                        \
        }                                                                      \
    } while (0)

// ---- heap ------------------------------------------------------------------------------------
// Ordered by score (higher first), then left (lower first).
static int bg_before(const bigram *a, const bigram *b) {
    if (a->score != b->score) return a->score > b->score;
    return a->left < b->left;
}

static int heap_push(mor__tok_ws *ws, const bigram *b) {
    if (ws->heap_n == ws->heap_cap) {
        size_t c = ws->heap_cap ? ws->heap_cap * 2 : 64;
        bigram *h = mor__realloc(ws->al, ws->heap, ws->heap_cap, c, sizeof *h);
        if (!h) return MOR_E_NOMEM;
        ws->heap = h;
        ws->heap_cap = c;
    }
    size_t i = ws->heap_n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!bg_before(b, &ws->heap[p])) break;
        ws->heap[i] = ws->heap[p];
        i = p;
    }
    ws->heap[i] = *b;
    return MOR_OK;
}

static bigram heap_pop(mor__tok_ws *ws) {
    bigram top = ws->heap[0];
    bigram last = ws->heap[--ws->heap_n];
    size_t n = ws->heap_n, i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && bg_before(&ws->heap[c + 1], &ws->heap[c])) c++;
        if (!bg_before(&ws->heap[c], &last)) break;
        ws->heap[i] = ws->heap[c];
        i = c;
    }
    if (n) ws->heap[i] = last;
    return top;
}

// ---- SentencePiece ---------------------------------------------------------------------------

static int spm_try_add(const mor__vocab *v, mor__tok_ws *ws, int32_t l, int32_t r) {
    if (l < 0 || r < 0) return MOR_OK;
    const sym *a = &ws->syms[l], *b = &ws->syms[r];
    uint32_t size = a->len + b->len;
    int32_t id = mor__vocab_find(v, ws->buf + a->start, size);
    if (id < 0) return MOR_OK;
    bigram bg = {v->scores[id], l, r, size, 0, 0, 0};
    return heap_push(ws, &bg);
}

// A symbol that is not a token, byte by byte: byte-fallback token, else the unknown token.
// A byte with neither is refused rather than dropped: MOR_E_ENCODING, *bad = its index in s.
static int spm_emit_bytes(const mor__vocab *v, const char *s, size_t n, mor__ivec *out, size_t *bad) {
    for (size_t j = 0; j < n; j++) {
        int32_t id = v->byte_tok[(uint8_t)s[j]];
        if (id < 0) id = v->special[MOR__SP_UNK];
        if (id < 0) {
            *bad = j;
            return MOR_E_ENCODING;
        }
        if (mor__ivec_push(out, id)) return MOR_E_NOMEM;
    }
    return MOR_OK;
}

// Offset in text[0..len) of byte eo of the escaped text (undoes the escaping of spm_fragment:
// a U+2581 written for a space maps to that space). The dummy prefix has no source byte:
// SIZE_MAX.
static size_t spm_source_offset(const char *text, size_t len, int prefix, size_t eo) {
    size_t e = prefix ? 3 : 0;
    if (eo < e) return SIZE_MAX;
    for (size_t i = 0; i < len; i++) {
        size_t w = text[i] == ' ' ? 3 : 1;
        if (eo < e + w) return i;
        e += w;
    }
    return len;
}

static int spm_fragment(const mor__vocab *v, mor__tok_ws *ws, const char *text, size_t len, int prefix,
                        mor__ivec *out, size_t *bad) {
    // Escape: optional dummy space, ' ' -> U+2581.
    size_t n_sp = prefix ? 1 : 0;
    for (size_t i = 0; i < len; i++) n_sp += text[i] == ' ';
    size_t elen = len + (prefix ? 1 : 0) + 2 * n_sp;
    GROW(ws->buf, ws->buf_cap, elen + 1);
    char *e = ws->buf;
    size_t o = 0;
    if (prefix) {
        memcpy(e, "\xE2\x96\x81", 3);
        o = 3;
    }
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ') {
            memcpy(e + o, "\xE2\x96\x81", 3);
            o += 3;
        } else {
            e[o++] = text[i];
        }
    }
    // Characters.
    GROW(ws->syms, ws->syms_cap, elen + 1);
    size_t ns = 0;
    for (size_t i = 0; i < elen;) {
        uint32_t cp;
        size_t k = mor__utf8_decode((const uint8_t *)e + i, elen - i, &cp);
        sym *s = &ws->syms[ns];
        s->start = (uint32_t)i;
        s->len = (uint32_t)k;
        s->prev = (int32_t)ns - 1;
        s->next = i + k == elen ? -1 : (int32_t)ns + 1;
        ns++;
        i += k;
    }
    ws->heap_n = 0;
    for (size_t i = 1; i < ns; i++)
        if (spm_try_add(v, ws, (int32_t)i - 1, (int32_t)i)) return MOR_E_NOMEM;
    while (ws->heap_n) {
        bigram bg = heap_pop(ws);
        sym *l = &ws->syms[bg.left], *r = &ws->syms[bg.right];
        if (l->len == 0 || r->len == 0 || l->len + r->len != bg.size) continue;  // stale
        l->len += r->len;
        r->len = 0;
        l->next = r->next;
        if (r->next >= 0) ws->syms[r->next].prev = bg.left;
        if (spm_try_add(v, ws, l->prev, bg.left) || spm_try_add(v, ws, bg.left, l->next)) return MOR_E_NOMEM;
    }
    for (int32_t i = ns ? 0 : -1; i != -1; i = ws->syms[i].next) {
        const sym *s = &ws->syms[i];
        int32_t id = mor__vocab_find(v, e + s->start, s->len);
        if (id >= 0) {
            if (mor__ivec_push(out, id)) return MOR_E_NOMEM;
            continue;
        }
        size_t j = 0;
        int rc = spm_emit_bytes(v, e + s->start, s->len, out, &j);
        if (rc == MOR_E_ENCODING) *bad = spm_source_offset(text, len, prefix, s->start + j);
        if (rc) return rc;
    }
    return MOR_OK;
}

// ---- byte-level BPE --------------------------------------------------------------------------

static int32_t merge_lookup(const mor__vocab *v, int32_t a, int32_t b, int32_t *res) {
    if (a < 0 || b < 0) return -1;
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    uint32_t h = mor__pair_hash(v->ptab, (uint32_t)a, (uint32_t)b, v->n_tokens > 65536) & v->mmask;
    for (;;) {
        const mor__merge_slot *e = &v->mslot[h];
        uint64_t s = e->key;
        if (s == key) {
            *res = e->res;
            return e->rank;
        }
        if (s == UINT64_MAX) return -1;
        h = (h + 1) & v->mmask;
    }
}

#define BPE_SCAN_MAX 64

// Index of the first byte of s[0..n) that has no token, n if none. Several vocabularies lack
// the characters of bytes that never occur in UTF-8 (0xC0, 0xC1, 0xF5..0xFF) and some lack
// 0xF1 too; llama.cpp drops such bytes, which loses input, so they are found up front and the
// text is refused. Every other byte starts as a token, and merges only ever yield tokens.
static size_t bpe_unencodable(const mor__vocab *v, const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n && v->byte_tok[s[i]] >= 0) i++;
    return i;
}

// bpe_unencodable() has vetted the text, so id < 0 cannot happen; refuse rather than drop.
static int bpe_emit(const mor__vocab *v, int32_t id, mor__ivec *out) {
    MOR__UNUSED(v);
    if (id < 0) return MOR_E_ENCODING;
    return mor__ivec_push(out, id);
}

static int bpe_word(const mor__vocab *v, mor__tok_ws *ws, const uint8_t *w, size_t n, mor__ivec *out) {
    if (v->ignore_merges && n <= v->max_token_len) {
        GROW(ws->buf, ws->buf_cap, 2 * n + 1);
        size_t o = 0;
        for (size_t i = 0; i < n; i++) {
            memcpy(ws->buf + o, v->byte_chr[w[i]], v->byte_chr_len[w[i]]);
            o += v->byte_chr_len[w[i]];
        }
        int32_t id = mor__vocab_find(v, ws->buf, o);
        if (id >= 0) return mor__ivec_push(out, id);
    }
    if (n == 1) return bpe_emit(v, v->byte_tok[w[0]], out);
    if (n <= BPE_SCAN_MAX) {
        // Short word: keep the rank of every adjacent pair and rescan for the minimum.
        int32_t ids[BPE_SCAN_MAX], rank[BPE_SCAN_MAX], res[BPE_SCAN_MAX];
        size_t m = n;
        int rc;
        for (size_t i = 0; i < n; i++) ids[i] = v->byte_tok[w[i]];
        for (size_t i = 0; i + 1 < m; i++)
            rank[i] = (ids[i] < 0 || ids[i + 1] < 0) ? -1 : merge_lookup(v, ids[i], ids[i + 1], &res[i]);
        for (;;) {
            size_t best = SIZE_MAX;
            int32_t br = INT32_MAX;
            for (size_t i = 0; i + 1 < m; i++)
                if (rank[i] >= 0 && rank[i] < br) {
                    br = rank[i];
                    best = i;
                }
            if (best == SIZE_MAX) break;
            ids[best] = res[best];
            // remove position best + 1
            for (size_t i = best + 1; i + 1 < m; i++) {
                ids[i] = ids[i + 1];
                rank[i] = rank[i + 1];
                res[i] = res[i + 1];
            }
            m--;
            if (best > 0) rank[best - 1] = merge_lookup(v, ids[best - 1], ids[best], &res[best - 1]);
            if (best + 1 < m) rank[best] = merge_lookup(v, ids[best], ids[best + 1], &res[best]);
        }
        for (size_t i = 0; i < m; i++)
            if ((rc = bpe_emit(v, ids[i], out))) return rc;
        return MOR_OK;
    }
    // Long word: linked symbols and a heap of candidate pairs.
    GROW(ws->syms, ws->syms_cap, n);
    for (size_t i = 0; i < n; i++) {
        sym *s = &ws->syms[i];
        s->id = v->byte_tok[w[i]];
        s->prev = (int32_t)i - 1;
        s->next = i + 1 == n ? -1 : (int32_t)i + 1;
        s->len = 1;
    }
    ws->heap_n = 0;
    for (size_t i = 0; i + 1 < n; i++) {
        int32_t a = ws->syms[i].id, b = ws->syms[i + 1].id, r, rk;
        if (a < 0 || b < 0 || (rk = merge_lookup(v, a, b, &r)) < 0) continue;
        bigram bg = {-(float)rk, (int32_t)i, (int32_t)i + 1, 0, a, b, r};
        if (heap_push(ws, &bg)) return MOR_E_NOMEM;
    }
    while (ws->heap_n) {
        bigram bg = heap_pop(ws);
        sym *l = &ws->syms[bg.left], *r = &ws->syms[bg.right];
        if (l->len == 0 || r->len == 0 || l->next != bg.right || l->id != bg.lid || r->id != bg.rid) continue;
        l->id = bg.res;
        r->len = 0;
        l->next = r->next;
        if (r->next >= 0) ws->syms[r->next].prev = bg.left;
        int32_t nb[2][2] = {{l->prev, bg.left}, {bg.left, l->next}};
        for (int k = 0; k < 2; k++) {
            int32_t x = nb[k][0], y = nb[k][1], res, rk;
            if (x < 0 || y < 0) continue;
            int32_t a = ws->syms[x].id, b = ws->syms[y].id;
            if (a < 0 || b < 0 || (rk = merge_lookup(v, a, b, &res)) < 0) continue;
            bigram nbg = {-(float)rk, x, y, 0, a, b, res};
            if (heap_push(ws, &nbg)) return MOR_E_NOMEM;
        }
    }
    for (int32_t i = 0; i != -1; i = ws->syms[i].next) {
        int rc = bpe_emit(v, ws->syms[i].id, out);
        if (rc) return rc;
    }
    return MOR_OK;
}

static int bpe_fragment(const mor__vocab *v, mor__tok_ws *ws, const char *text, size_t len, mor__ivec *out,
                        size_t *bad) {
    const uint8_t *s = (const uint8_t *)text;
    if ((*bad = bpe_unencodable(v, s, len)) < len) return MOR_E_ENCODING;
    if (len + 1 > ws->cp_cap) {
        size_t c = ws->cp_cap ? ws->cp_cap : 64;
        while (c < len + 1) c *= 2;
        // Scratch only (refilled below): each array is replaced, never copied.
        uint32_t **u32[] = {&ws->cps, &ws->offs, &ws->ends, &ws->tmp};
        for (size_t i = 0; i < sizeof u32 / sizeof u32[0]; i++) {
            uint32_t *p = mor__alloc(ws->al, c, sizeof *p, 0);
            if (!p) return MOR_E_NOMEM;
            mor__free(ws->al, *u32[i]);
            *u32[i] = p;
        }
        uint8_t *fl = mor__alloc(ws->al, c, 1, 0);
        if (!fl) return MOR_E_NOMEM;
        mor__free(ws->al, ws->fl);
        ws->fl = fl;
        ws->cp_cap = c;
    }
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        size_t k = mor__utf8_decode(s + i, len - i, &cp);
        ws->cps[n] = cp;
        ws->fl[n] = mor__uc_flags(cp);
        ws->offs[n] = (uint32_t)i;
        n++;
        i += k;
    }
    ws->offs[n] = (uint32_t)len;
    size_t nw = mor__pretok_split(v->pre, ws->cps, ws->fl, n, ws->ends, ws->tmp);
    size_t a = 0;
    for (size_t k = 0; k < nw; k++) {
        size_t b = ws->ends[k];
        uint32_t o0 = ws->offs[a], o1 = ws->offs[b];
        int rc = bpe_word(v, ws, s + o0, o1 - o0, out);
        if (rc == MOR_E_ENCODING) *bad = o0;
        if (rc) return rc;
        a = b;
    }
    return MOR_OK;
}

int mor__tokenize_fragment(const mor__vocab *v, mor__tok_ws *ws, const char *text, size_t len, int prefix,
                           mor__ivec *out, size_t *bad) {
    *bad = 0;
    if (v->type == MOR__VOCAB_SPM) return spm_fragment(v, ws, text, len, prefix, out, bad);
    if (len == 0) return MOR_OK;
    return bpe_fragment(v, ws, text, len, out, bad);
}

// ---- driver ----------------------------------------------------------------------------------

typedef struct {
    uint32_t off, len;
    int32_t  tok;  // -1: text
} frag;

typedef struct {
    frag  *a;
    size_t n, cap;
    const mor_allocator *al;
} fragvec;

static int frag_push(fragvec *f, uint32_t off, uint32_t len, int32_t tok) {
    if (f->n == f->cap) {
        size_t c = f->cap ? f->cap * 2 : 16;
        frag *a = mor__realloc(f->al, f->a, f->cap, c, sizeof *a);
        if (!a) return MOR_E_NOMEM;
        f->a = a;
        f->cap = c;
    }
    f->a[f->n].off = off;
    f->a[f->n].len = len;
    f->a[f->n].tok = tok;
    f->n++;
    return MOR_OK;
}

// First occurrence of needle (nl >= 1 bytes) in hay[0..hl), or NULL.
static const char *find_bytes(const char *hay, size_t hl, const char *needle, size_t nl) {
    if (nl > hl) return NULL;
    const char *end = hay + (hl - nl) + 1, *p = hay;
    while (p < end) {
        p = memchr(p, needle[0], (size_t)(end - p));
        if (!p) return NULL;
        if (memcmp(p, needle, nl) == 0) return p;
        p++;
    }
    return NULL;
}

// Split text fragments on every occurrence of each special token, longest tokens first.
static int partition(const mor__vocab *v, const char *text, size_t len, int parse_special, fragvec *f) {
    fragvec g = {.al = v->alloc};
    int rc = MOR_OK;
    if (len && (rc = frag_push(f, 0, (uint32_t)len, -1))) return rc;
    for (uint32_t k = 0; k < v->n_specials && f->n; k++) {
        int32_t id = v->specials[k];
        uint8_t ty = v->ttype[id];
        if (!parse_special && ty != MOR__TOK_USER) continue;
        const char *st = v->text + v->text_off[id];
        size_t sl = v->text_off[id + 1] - v->text_off[id];
        int any = 0;
        for (size_t i = 0; i < f->n && !any; i++)
            if (f->a[i].tok < 0 && f->a[i].len >= sl && find_bytes(text + f->a[i].off, f->a[i].len, st, sl)) any = 1;
        if (!any) continue;
        g.n = 0;
        for (size_t i = 0; i < f->n; i++) {
            frag fr = f->a[i];
            if (fr.tok >= 0) {
                if ((rc = frag_push(&g, fr.off, fr.len, fr.tok))) goto out;
                continue;
            }
            uint32_t pos = fr.off, end = fr.off + fr.len;
            for (;;) {
                const char *m = find_bytes(text + pos, end - pos, st, sl);
                if (!m) break;
                uint32_t mo = (uint32_t)(m - text);
                if (mo > pos && (rc = frag_push(&g, pos, mo - pos, -1))) goto out;
                if ((rc = frag_push(&g, mo, (uint32_t)sl, id))) goto out;
                pos = mo + (uint32_t)sl;
            }
            if (pos < end && (rc = frag_push(&g, pos, end - pos, -1))) goto out;
        }
        fragvec t = *f;
        *f = g;
        g = t;
    }
out:
    mor__free(g.al, g.a);
    return rc;
}

#define MOR__MAX_TEXT (1u << 30)

// MOR_E_ENCODING for the text fragment at frag_off (frag_len bytes): name the byte in the log
// and return its offset in the whole text, which mor_tokenize hands back in *n_tokens (it has
// no message buffer). bad: index in the fragment, SIZE_MAX for the dummy-prefix space, which
// has no byte of its own (reported at the fragment's start).
static size_t unencodable(const char *text, size_t frag_off, size_t frag_len, size_t bad) {
    if (bad >= frag_len) {
        mor__log(MOR_LOG_WARN, "tokenizer: the vocabulary cannot encode the dummy-prefix space (U+2581) "
                 "before offset %zu", frag_off);
        return frag_off;
    }
    size_t off = frag_off + bad;
    mor__log(MOR_LOG_WARN, "tokenizer: byte 0x%02X at offset %zu has no token in the vocabulary; "
             "text refused (MOR_E_ENCODING)", (unsigned)(uint8_t)text[off], off);
    return off;
}

int mor__vocab_tokenize(const mor__vocab *v, const char *text, size_t text_len, int32_t *tokens, size_t capacity,
                        uint32_t flags, size_t *n_tokens) {
    if (!v || !n_tokens || (!text && text_len) || (!tokens && capacity)) return MOR_E_INVALID;
    if (text_len > MOR__MAX_TEXT) return MOR_E_INVALID;
    fragvec f = {.al = v->alloc};
    mor__ivec out = {.al = v->alloc};
    mor__tok_ws *ws = mor__tok_ws_create(v->alloc);
    int rc = ws ? MOR_OK : MOR_E_NOMEM;
    if (!rc) rc = partition(v, text, text_len, (flags & MOR_TOKENIZE_PARSE_SPECIAL) != 0, &f);
    if (!rc && (flags & MOR_TOKENIZE_ADD_SPECIAL) && v->add_bos) rc = mor__ivec_push(&out, v->special[MOR__SP_BOS]);
    int prev_special = 1;
    for (size_t i = 0; !rc && i < f.n; i++) {
        if (f.a[i].tok >= 0) {
            rc = mor__ivec_push(&out, f.a[i].tok);
            prev_special = 1;
        } else {
            int prefix = v->type == MOR__VOCAB_SPM && v->add_space_prefix && prev_special;
            size_t bad;
            rc = mor__tokenize_fragment(v, ws, text + f.a[i].off, f.a[i].len, prefix, &out, &bad);
            if (rc == MOR_E_ENCODING) *n_tokens = unencodable(text, f.a[i].off, f.a[i].len, bad);
            prev_special = 0;
        }
    }
    if (!rc && (flags & MOR_TOKENIZE_ADD_SPECIAL) && v->add_eos) rc = mor__ivec_push(&out, v->special[MOR__SP_EOS]);
    if (!rc) {
        *n_tokens = out.n;
        if (out.n > capacity) rc = MOR_E_BUFFER_SMALL;
        else if (out.n) memcpy(tokens, out.a, out.n * sizeof *tokens);
    }
    mor__free(v->alloc, f.a);
    mor__free(v->alloc, out.a);
    mor__tok_ws_free(ws);
    return rc;
}
