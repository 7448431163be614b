// tokenizer.h: vocabularies, tokenization and detokenization (internal).
//
// A mor__vocab is built once from the tokenizer.ggml.* keys of a GGUF file (or from a
// description filled by a converter) and is immutable afterwards: every function taking a
// const mor__vocab * is safe to call from several threads at once. Tokenization allocates its
// work memory per call. See docs/TOKENIZER.md for the algorithms and what was verified.
//
// Files: tokenizer.c (building, special tokens, pieces, public API), tokenizer-bpe.c (the
// SentencePiece and byte-level BPE merge loops and the tokenize driver), pretok.c (the
// pre-tokenizers of byte-level BPE vocabularies).
#ifndef MOR_TOKENIZER_H
#define MOR_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "gguf.h"
#include "internal.h"

typedef struct mor__vocab mor__vocab;

// tokenizer.ggml.model
enum { MOR__VOCAB_SPM = 1, MOR__VOCAB_BPE = 2 };

// tokenizer.ggml.token_type values (as written by llama.cpp's converters).
enum {
    MOR__TOK_UNDEFINED = 0, MOR__TOK_NORMAL = 1, MOR__TOK_UNKNOWN = 2, MOR__TOK_CONTROL = 3,
    MOR__TOK_USER = 4, MOR__TOK_UNUSED = 5, MOR__TOK_BYTE = 6,
};

// Pre-tokenizers (tokenizer.ggml.pre) of byte-level BPE vocabularies; see pretok.c.
enum {
    MOR__PRE_DEFAULT = 0, MOR__PRE_GPT2, MOR__PRE_STARCODER, MOR__PRE_LLAMA3, MOR__PRE_QWEN2,
    MOR__PRE_FALCON, MOR__PRE_DEEPSEEK_LLM, MOR__PRE_DEEPSEEK_CODER, MOR__PRE_BLOOM,
    MOR__PRE_VIKING, MOR__PRE_COUNT
};

// Special token slots.
enum {
    MOR__SP_BOS, MOR__SP_EOS, MOR__SP_UNK, MOR__SP_PAD, MOR__SP_SEP, MOR__SP_EOT, MOR__SP_EOM,
    MOR__SP_COUNT
};

// Description a vocabulary is built from. Pointers are borrowed for the duration of
// mor__vocab_build (everything is copied).
typedef struct {
    int              type;          // MOR__VOCAB_SPM / MOR__VOCAB_BPE
    const char      *pre;           // pre-tokenizer name (BPE); NULL: none given
    size_t           pre_len;
    uint32_t         n_tokens;
    const char *const *tokens;      // token texts (not NUL-terminated), n_tokens
    const uint32_t  *token_lens;
    const float     *scores;        // NULL: all 0
    const int32_t   *types;         // NULL: all normal
    uint32_t         n_merges;      // BPE
    const char *const *merges;      // "left right"
    const uint32_t  *merge_lens;
    int64_t          special[MOR__SP_COUNT];  // id; -1: none; -2: not given (default applies)
    int              add_bos;       // -1: not given
    int              add_eos;       // -1: not given
    int              add_space_prefix;  // -1: not given
    const mor_allocator *alloc;     // the vocabulary's memory and its tokenizer calls' (NULL: libc)
    const uint64_t  *hash_key;      // 2 words keying the hash tables; NULL: a fresh random key
                                    // (only tests fix it, to construct collisions)
} mor__vocab_desc;

// Build from tokenizer.ggml.* keys. MOR_E_NOT_FOUND (no message) if the file has no
// tokenizer.ggml.model key; MOR_E_FORMAT / MOR_E_UNSUPPORTED with a message naming the key.
int  mor__vocab_load(mor__vocab **out, const mor__gguf *g, const mor_allocator *alloc, char *err, size_t err_n);
int  mor__vocab_build(mor__vocab **out, const mor__vocab_desc *d, char *err, size_t err_n);
void mor__vocab_free(mor__vocab *v);

// The vocabulary of a model (NULL if none), which the loader (load.c) attached to it.
const mor__vocab *mor__model_vocab(const mor_model *m);

int32_t     mor__vocab_n_tokens(const mor__vocab *v);
// "<0xNN>" with two uppercase or lowercase hex digits -> the byte, else -1 (what a byte token's
// text must be; the llama2.c importer types its pieces by the same rule).
int         mor__parse_byte_token(const char *s, size_t n);
int         mor__vocab_type(const mor__vocab *v);
int         mor__vocab_pre(const mor__vocab *v);
const char *mor__vocab_pre_name(int pre);
// Special token id for a MOR__SP_* slot, -1 if none.
int32_t     mor__vocab_special(const mor__vocab *v, int slot);
int         mor__vocab_is_eog(const mor__vocab *v, int32_t token);
int         mor__vocab_token_type(const mor__vocab *v, int32_t token);
int         mor__vocab_add_bos(const mor__vocab *v);
int         mor__vocab_add_eos(const mor__vocab *v);
int         mor__vocab_add_space_prefix(const mor__vocab *v);
// Token id of an exact token text, -1 if none.
int32_t     mor__vocab_find(const mor__vocab *v, const char *text, size_t len);

// Replace the pre-tokenizer (tests and tools: run one vocabulary under another splitter).
// name NULL means "no tokenizer.ggml.pre key". MOR_E_UNSUPPORTED for an unknown name.
int mor__vocab_set_pre(mor__vocab *v, const char *name, char *err, size_t err_n);

// Same contracts as the public mor_tokenize / mor_token_to_piece / mor_detokenize.
int mor__vocab_tokenize(const mor__vocab *v, const char *text, size_t text_len, int32_t *tokens,
                        size_t capacity, uint32_t flags, size_t *n_tokens);
int mor__vocab_piece(const mor__vocab *v, int32_t token, char *buf, size_t capacity,
                     uint32_t flags, size_t *n_bytes);
int mor__vocab_detokenize(const mor__vocab *v, const int32_t *tokens, size_t n_tokens, char *buf,
                          size_t capacity, uint32_t flags, size_t *n_bytes);

// ---- shared between tokenizer*.c and pretok.c (not for other modules) ----------------------

// Longest run of occupied slots a hash table may hold: a vocabulary with a longer one is
// refused (MOR_E_FORMAT), so building does at most this many probes per entry and every lookup
// visits at most this many slots plus one, whatever the file holds. With a random key at load
// 1/2 a longer run has a probability below 2e-12 even in a table of 2^30 slots (the most
// tokens allowed), below 2e-15 at 2^20; real vocabularies stay under 80 (docs/TOKENIZER.md).
#define MOR__VOCAB_MAX_RUN 256u

// ---- keyed hashing (see tokenizer.c) ---------------------------------------------------------

// Merge pairs are hashed by simple tabulation: one random 32-bit word per byte of the left and
// the right id, XORed. With the words drawn after the vocabulary is fixed, linear probing takes
// expected constant time per operation whatever the pairs (Patrascu and Thorup, "The power of
// simple tabulation hashing", 2011), at a fraction of SipHash's cost on this hot path.
typedef uint32_t mor__pair_tab[8][256];
// The tables of a key (SipHash-1-3 of a counter under it).
void mor__pair_tab_init(mor__pair_tab t, const uint64_t k[2]);
// wide: 0 when every id is below 2^16 (vocabularies of at most 65536 tokens): the two high
// bytes are then 0 and their words would only XOR the same constant into every hash, so they
// are left out (tabulation over the four low bytes).
static inline uint32_t mor__pair_hash(const mor__pair_tab t, uint32_t a, uint32_t b, int wide) {
    uint32_t h = t[0][a & 255] ^ t[1][(a >> 8) & 255] ^ t[4][b & 255] ^ t[5][(b >> 8) & 255];
    if (wide) h ^= t[2][(a >> 16) & 255] ^ t[3][a >> 24] ^ t[6][(b >> 16) & 255] ^ t[7][b >> 24];
    return h;
}

// SipHash-c-d of bytes p[0..n) under key k (k[0], k[1]: the key's two little-endian halves).
// Exposed for tests (known-answer test of SipHash-2-4); the text table uses c = 1, d = 3.
uint64_t mor__siphash(const uint64_t k[2], const void *p, size_t n, int c, int d);

typedef struct {
    uint64_t key;                // left id << 32 | right id
    int32_t  rank, res;
} mor__merge_slot;

struct mor__vocab {
    const mor_allocator *alloc;  // borrowed (the model's): the vocabulary and per-call scratch
    int       type;              // MOR__VOCAB_*
    int       pre;               // MOR__PRE_* (BPE)
    int       ignore_merges;     // BPE: a whole word that is a token is emitted as is
    int       add_bos, add_eos, add_space_prefix;
    int32_t   n_tokens;
    uint32_t  max_token_len;
    char     *text;              // token texts, concatenated
    uint32_t *text_off;          // [n_tokens + 1]
    char     *piece;             // detokenized pieces, concatenated
    uint32_t *piece_off;         // [n_tokens + 1]
    float    *scores;            // [n_tokens]
    uint8_t  *ttype;             // [n_tokens] MOR__TOK_*
    uint8_t  *eog;               // [n_tokens] 1: ends generation
    int32_t   special[MOR__SP_COUNT];
    // Both hash tables use linear probing at a load of at most 1/2, keyed by hkey, drawn at
    // random for each vocabulary: texts with SipHash-1-3, merge pairs by tabulation through
    // ptab (derived from hkey). See docs/TOKENIZER.md.
    uint64_t  hkey[2];
    mor__pair_tab ptab;
    // text -> id: open addressing, -1 empty
    int32_t  *hash;
    uint32_t  hash_mask;
    // BPE merges: (left id, right id) -> rank and merged id; key UINT64_MAX empty. One 16-byte
    // slot holds all three, so a lookup touches one cache line.
    mor__merge_slot *mslot;
    uint32_t  mmask;
    uint32_t  n_merges;          // merges in the table
    // Build statistics (tests): slots visited while building each table, and its longest run
    // of occupied slots (at most MOR__VOCAB_MAX_RUN; a lookup visits at most run + 1 slots).
    uint64_t  probes_text, probes_merge;
    uint32_t  run_text, run_merge;
    int32_t   byte_tok[256];     // SPM: byte-fallback token; BPE: token of the byte's character,
                                 // else its byte token <0xNN>; -1: none
    char      byte_chr[256][2];  // BPE: UTF-8 of the character each byte maps to (2 bytes max)
    uint8_t   byte_chr_len[256];
    int32_t  *specials;          // tokens split out before tokenizing, longest text first
    uint32_t  n_specials;
};

// Growable int32 array.
typedef struct {
    int32_t *a;
    size_t   n, cap;
    const mor_allocator *al;
} mor__ivec;
int mor__ivec_push(mor__ivec *v, int32_t x);

// Raw bytes of a token's piece as detokenization renders it (normal tokens: ▁ -> space or the
// byte-level map undone; byte tokens: the byte; user-defined: the text; control / unknown:
// their text, rendered only on request). Borrowed from the vocabulary.
const char *mor__vocab_piece_ref(const mor__vocab *v, int32_t token, size_t *len);

// Tokenize one fragment of plain text (no special-token parsing) and append the ids. For SPM
// vocabularies `prefix` adds the dummy space. Returns MOR_OK, MOR_E_NOMEM or MOR_E_ENCODING
// (a byte the vocabulary has no token for: *bad = its index in text, SIZE_MAX if it is the
// dummy-prefix space; out may hold part of the fragment's ids).
typedef struct mor__tok_ws mor__tok_ws;
mor__tok_ws *mor__tok_ws_create(const mor_allocator *al);
void         mor__tok_ws_free(mor__tok_ws *ws);
int mor__tokenize_fragment(const mor__vocab *v, mor__tok_ws *ws, const char *text, size_t len,
                           int prefix, mor__ivec *out, size_t *bad);

// Pre-tokenizer: split cps[0..n) (code points with class flags) into words. Writes the end
// index of every word, in order, into ends (room for n entries; tmp the same) and returns the
// count.
size_t mor__pretok_split(int pre, const uint32_t *cps, const uint8_t *fl, size_t n,
                         uint32_t *ends, uint32_t *tmp);
// Pre-tokenizer id for a tokenizer.ggml.pre value (name NULL: key absent), -1 if unknown.
// *ignore_merges and *add_bos (-1: no opinion) receive the name's tokenizer flags.
int mor__pretok_lookup(const char *name, size_t len, int *ignore_merges, int *add_bos);

#endif
