// quant.c: F32 -> Q8_0 / Q4_0 weight quantization (llama.cpp's reference rules, quant.h).
#include "quant.h"

#include "kernels.h"

#include <math.h>
#include <string.h>

void mor__quantize_q8_0(const float *x, void *dst, int64_t n) {
    uint8_t *o = dst;
    for (int64_t b = 0; b < n / MOR__QK; b++, x += MOR__QK, o += MOR__Q8_0_SIZE) {
        float amax = 0;
        for (int j = 0; j < MOR__QK; j++) amax = fmaxf(amax, fabsf(x[j]));
        float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        uint16_t h = mor__f32_to_f16(d);
        memcpy(o, &h, 2);
        for (int j = 0; j < MOR__QK; j++) o[2 + j] = (uint8_t)(int8_t)roundf(x[j] * id);
    }
}

void mor__quantize_q4_0(const float *x, void *dst, int64_t n) {
    uint8_t *o = dst;
    for (int64_t b = 0; b < n / MOR__QK; b++, x += MOR__QK, o += MOR__Q4_0_SIZE) {
        float amax = 0, mx = 0;
        for (int j = 0; j < MOR__QK; j++)
            if (amax < fabsf(x[j])) amax = fabsf(x[j]), mx = x[j];
        float d = mx / -8.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        uint16_t h = mor__f32_to_f16(d);
        memcpy(o, &h, 2);
        for (int j = 0; j < 16; j++) {
            int a = (int8_t)(x[j] * id + 8.5f), c = (int8_t)(x[j + 16] * id + 8.5f);
            a = a < 15 ? a : 15;
            c = c < 15 ? c : 15;
            o[2 + j] = (uint8_t)(a | c << 4);
        }
    }
}
