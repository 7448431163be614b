// llama2c.h: conversion of llama2.c checkpoints and tokenizers to GGUF (architecture `llama`).
//
// Input formats (all little-endian):
//   - checkpoint "version 0" (legacy, run.c): 7 int32 (dim, hidden_dim, n_layers, n_heads,
//     n_kv_heads, vocab_size, seq_len; vocab_size < 0 means a separate classifier follows the
//     RoPE tables), then fp32 token_embedding, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3,
//     rms_final, freq_cis_real, freq_cis_imag [, wcls];
//   - "version 1" (export.py --version 1): uint32 magic 0x616b3432 ("ak42"), int32 version 1,
//     the 7 int32, a uint8 shared-classifier flag, zeros to 256 bytes, then fp32 rms_att,
//     rms_ffn, rms_final, token_embedding, wq, wk, wv, wo, w1, w2, w3 [, wcls];
//   - "version 2" (export.py --version 2, read by runq.c): as version 1 plus an int32 group
//     size after the flag; the norms stay fp32 and every matrix (token_embedding, wq.., w3
//     [, wcls], one per layer) is int8 values followed by one fp32 scale per group. They are
//     dequantized exactly as runq.c does (value * scale, in fp32) and written as F32.
//   - tokenizer (tokenizer.bin / tok512.bin): int32 max_token_length, then per token a float32
//     score, an int32 byte length and the bytes.
//
// Output: what llama.cpp's convert-llama2c-to-ggml writes, key for key and tensor for tensor
// (same order, types and layout; all tensors F32, no Q/K permutation, `output.weight` a copy
// of the embedding when the classifier is shared), with one deliberate difference:
// `llama.context_length` is the checkpoint's seq_len (the context it was trained at) unless
// the caller overrides it; llama.cpp writes its default of 2048 instead. With the override set
// to 2048, converting stories260K.bin + tok512.bin reproduces llama.cpp's stories260K.gguf
// byte for byte.
//
// Tokens: id 0 becomes "<unk>" (type 2, unknown), 1 "<s>" and 2 "</s>" (type 3, control); an
// empty piece is control; a piece matching "<0x%02hhX>" is a byte token (type 6); the rest are
// normal (type 1). Spaces become U+2581. bos = 1, eos = 2, unk = 0, separator and padding =
// 0xFFFFFFFF (none).
//
// Every input is validated before anything is written: header values > 0, n_heads divides
// dim, n_kv_heads divides n_heads, even head size, the file size exactly what the header
// implies, the tokenizer holding exactly vocab_size well-formed entries. Failures return
// MOR_E_FORMAT (MOR_E_UNSUPPORTED for an unknown checkpoint version, MOR_E_NOMEM) with a
// message naming the field, the expected and the found value.
#ifndef MOR_LLAMA2C_H
#define MOR_LLAMA2C_H

#include <stddef.h>
#include <stdint.h>

#include "gguf-write.h"

// Appends the converted keys and tensors to `w` (normally a fresh writer). model == NULL (and
// model_size 0) builds a vocab-only file: the tokenizer keys and general.* keys, no tensors,
// with as many tokens as the tokenizer holds. context_length 0 means the checkpoint's seq_len.
int mor__llama2c_build(mor__gguf_writer *w, const void *model, size_t model_size, const void *tok,
                       size_t tok_size, uint32_t context_length, char *err, size_t err_n);

// Convenience: build into a fresh writer and return the finished image (malloc'd; free()).
int mor__llama2c_convert(const void *model, size_t model_size, const void *tok, size_t tok_size,
                         void **gguf_out, size_t *gguf_size, char *err, size_t err_n);

#endif
