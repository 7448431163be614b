// relax.h: a vanilla model (arch llama, or arch mor with one recursion) to a relaxed recursive
// mor model (tools/mor-relax; tools/lib/relax.c). docs/RELAX.md has the method.
//
// Stored layers come from the source's layers by an init method; every unrolled layer of the
// shared part gets, per projection named in `roles`, a LoRA pair from the truncated SVD (svd.h)
// of its residual R = W_source - W_shared as written: lora_a = V_kᵀ, lora_b = U_k S_k / sigma,
// k = min(rank, in, out); and per-recursion attn_norm / ffn_norm overrides where the source's
// norms differ from the shared ones. The unique first and last layers of the middle strategies
// are the source's (copied). Token embedding, output matrix, final norm, tokenizer and exit
// heads are carried as they are; adjacent-pair RoPE (arch llama, mor.rope.type norm) becomes
// rotate-half by a permutation of the attn_q / attn_k rows within each head (exact).
#ifndef MOR_RELAX_H
#define MOR_RELAX_H

#include <stddef.h>
#include <stdint.h>

enum { MOR__RELAX_CYCLE, MOR__RELAX_SEQUENCE, MOR__RELAX_MIDDLE_CYCLE, MOR__RELAX_MIDDLE_SEQUENCE };
enum { MOR__RELAX_STEPWISE, MOR__RELAX_AVERAGE, MOR__RELAX_LOWER };
#define MOR__RELAX_AUTO      UINT32_MAX  // type: F32 when every source projection is F32, else F16
#define MOR__RELAX_FULL_RANK (-1L)
#define MOR__RELAX_ALL_ROLES 0x7f        // bit r: projection r of attn_q, attn_k, attn_v,
                                         // attn_output, ffn_gate, ffn_up, ffn_down

typedef struct {
    int      n_rec;           // N_r >= 2
    int      sharing;         // MOR__RELAX_CYCLE ...
    int      init;            // MOR__RELAX_STEPWISE ...
    long     rank;            // LoRA rank >= 0 (0: none), or MOR__RELAX_FULL_RANK
    int      roles;           // projections that get LoRA (MOR__RELAX_ALL_ROLES)
    uint32_t type;            // shared matrices: MOR__DT_F32, MOR__DT_F16 or AUTO
    uint32_t lora_type;       // LoRA matrices: likewise
    float    sigma;           // written as mor.lora.scale; lora_b carries 1 / sigma
    int      norm_overrides;  // per-recursion norms where the source's differ (default 1)
    int      skip_exact;      // no LoRA pair where the residual is exactly zero (default 0)
    // Warnings (dropped keys, exit heads no policy reads): one sentence each; may be NULL.
    void   (*warn)(void *user, const char *msg);
    void    *user;
} mor__relax_opts;

// Defaults: middle_cycle, stepwise, rank 0, all roles, AUTO types, sigma 1, norm overrides on.
// n_rec is 0 and must be set.
void mor__relax_opts_init(mor__relax_opts *o);

typedef struct {
    char     arch[8];           // of the source: "llama" or "mor"
    int      L, d, ff, n_h, n_kv;
    int      rope_permuted;     // Q/K rows were permuted to rotate-half RoPE
    int      B, n_store;
    uint32_t type, lora_type;   // as resolved
    int64_t  rank[7];           // LoRA rank per projection (0: none)
    char     sources[512];      // "1<-1+3+5 2<-2+4+6": source layers of each shared stored layer
    uint64_t params_in, params_out;  // elements of every tensor
    uint64_t body_in, body_out;      // without token_embd, output and exit output matrices
    int      n_lora, n_lora_zero, n_norm_override, n_svd;
    double   seconds, svd_seconds;
} mor__relax_stats;

// Converts the file `in` into `out` (written as out + ".part", loaded by the engine, then
// renamed; nothing is left under either name on failure). Returns MOR_OK and fills *st (may be
// NULL), or: MOR_E_INVALID (options: N_r < 2, a depth that does not split into N_r blocks, the
// message listing the splits that do; output = input), MOR_E_UNSUPPORTED (architecture,
// recursive source, router, RoPE factors or scaling, mixture of experts, a tensor it cannot
// carry, a value beyond F16), MOR_E_FORMAT, MOR_E_IO, MOR_E_NOMEM; the message names the file,
// key or tensor.
int mor__relax_file(const char *in, const char *out, const mor__relax_opts *o, mor__relax_stats *st,
                    char *err, size_t err_n);

// Names: "cycle" ... and "stepwise" ...; parsers return the index or -1.
const char *mor__relax_sharing_name(int sharing);
const char *mor__relax_init_name(int init);
int mor__relax_sharing_parse(const char *s);
int mor__relax_init_parse(const char *s);
// "q,k,v,o,gate,up,down" (short or GGUF role names, or "all") to a role mask; -1 if bad or empty.
int mor__relax_roles_parse(const char *s);

#endif
