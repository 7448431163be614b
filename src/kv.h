// kv.h: a session's K/V cache (recursion-wise caching, KV sharing, state propagation).
//
// One slot per unrolled layer l. A slot holds up to n_ctx entries, each the post-RoPE key and
// the value of one token (kv_dim floats each, or halves with F16 entries) and that token's
// absolute position. Entries stay sorted by position, so the entries a query at position p
// may attend to are a prefix (those with pos <= p). Slots of recursions that only some tokens
// reach hold only those tokens: each slot has its own length.
//
// The slot map says which slot a layer reads and whether it writes: every layer its own,
// except with KV sharing, where a layer at recursion >= 1 reads the slot of the recursion-0
// layer of the same stored layer and writes nothing (its own slot stays empty).
#ifndef MOR_KV_H
#define MOR_KV_H

#include "bytes.h"
#include "work.h"

typedef struct {
    float    *k, *v;      // [n_ctx][kv_dim] F32 entries, or NULL with F16 entries
    uint16_t *k16, *v16;  // [n_ctx][kv_dim] F16 entries, or NULL with F32 entries
    int32_t  *pos;        // [n_ctx] absolute positions, increasing
    int32_t   len;
} mor__kv_slot;

typedef struct {
    mor__kv_slot *slots;       // [n_layer]
    int32_t      *slot_of;     // [n_layer] slot layer l reads
    uint8_t      *slot_write;  // [n_layer] 1: layer l appends its own entries
    int32_t       n_layer, n_ctx, kv_dim;
    int           f16;         // entries are IEEE halves
} mor__kv;

// Plans the cache (alloc.h): slots of n_ctx entries for n_layer layers. Entries are not
// zeroed (a slot's length bounds every read), so an unfilled context costs address space only.
void mor__kv_plan(mor__plan *c, mor__kv *kv, int32_t n_layer, int32_t n_ctx, int32_t kv_dim, int f16);
// The slot map for a strategy: share != 0 for recursive KV sharing.
void mor__kv_map(mor__kv *kv, const mor_model *m, int share);

// Number of entries of a slot at positions <= p.
int32_t mor__kv_visible(const mor__kv_slot *sl, int32_t p);
// Puts the entry of position pos into a slot, keeping it sorted; an entry already at pos is
// replaced (a deep pass recomputing a stacked token's K/V). F16 slots round to nearest even.
void    mor__kv_put(mor__kv_slot *sl, int32_t pos, const float *k, const float *v, int kv_dim);
// Drops the entries at positions >= n_keep from every slot.
void    mor__kv_truncate(mor__kv *kv, int32_t n_keep);
// Bytes the entries held now take (keys and values, in the cache's element type).
int64_t mor__kv_bytes(const mor__kv *kv);
// Bytes one token adds to a layer's slot (key and value).
int64_t mor__kv_entry_bytes(const mor__kv *kv);
// CALM state propagation: the K/V of layer l computed from the exit state h of a token at
// position pos (rotation cos/sin of that position), put into the layer's slot when it writes.
void    mor__kv_propagate(mor__kv *kv, mor__work *w, const mor_model *m, int32_t l, const float *h, int32_t pos,
                          const float *cos, const float *sin);

// State format of the cache: per slot u32 len, pos[len] (i32), keys then values (len * kv_dim
// each: f32, or halves two per word). check validates a stream holding n_past tokens without
// writing anything (the message to err); load then reads it.
void mor__kv_save(const mor__kv *kv, mor__wbuf *w);
int  mor__kv_check(const mor__kv *kv, mor__rbuf *r, uint32_t n_past, char *err, size_t err_n);
void mor__kv_load(mor__kv *kv, mor__rbuf *r);

#endif
