// test-gguf.c: the GGUF container (docs/FORMAT.md §1): writer round trips, every value type,
// tensor placement and alignment, and every malformed case the parser must refuse with the
// documented status and a message naming the problem. Ends with a seeded byte-mutation loop
// (run it under `make asan`).
#include "harness.h"

#include "gguf-write.h"
#include "gguf.h"
#include "mor.h"

#include <stdio.h>
#include <unistd.h>

// ---- helpers -----------------------------------------------------------------------------------

static uint8_t *finish(mor__gguf_writer *w, uint64_t *n) {
    uint8_t *p = mor__gguf_writer_finish(w, n);
    mor__gguf_writer_free(w);
    return p;
}

static char parse_err[1024];

// Parses and returns the status; the message is left in parse_err, the parse freed.
static int parse_status(const void *img, uint64_t n) {
    mor__gguf g;
    parse_err[0] = 0;
    int s = mor__gguf_parse(&g, img, n, parse_err, sizeof parse_err);
    mor__gguf_free(&g);
    return s;
}

// Expects status `want` and, when sub is not NULL, a message containing it; frees img.
#define EXPECT_PARSE(img, n, want, sub)                                                           \
    do {                                                                                          \
        uint8_t *img_ = (img);                                                                    \
        ASSERT(img_ != NULL);                                                                     \
        int s__ = parse_status(img_, (n));                                                        \
        free(img_);                                                                               \
        if (s__ != (want))                                                                        \
            TEST__FAIL("parse returned %s, expected %s (message: %s)", mor_status_name(s__),      \
                       mor_status_name(want), parse_err);                                         \
        const char *sub_ = (sub);                                                                 \
        if (getenv("MOR_TEST_VERBOSE")) printf("#   line %d: %s\n", __LINE__, parse_err);        \
        if (sub_) ASSERT_STR_CONTAINS(parse_err, sub_);                                           \
    } while (0)

static void put_u64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static const float f32_data[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};

// A writer holding one ordinary key (so malformed records are not first).
static mor__gguf_writer *base_writer(void) {
    mor__gguf_writer *w = mor__gguf_writer_create();
    if (w) mor__gguf_w_str(w, "general.architecture", "llama");
    return w;
}

// One F32 tensor `name` of 12 elements [4, 3].
static int add_f32(mor__gguf_writer *w, const char *name) {
    uint64_t dims[2] = {4, 3};
    return mor__gguf_w_tensor(w, name, MOR__DT_F32, 2, dims, f32_data);
}

// Raw tensor record with the given dims/type/offset and 48 bytes of data.
static uint8_t *one_raw_tensor(const char *name, uint32_t type, uint32_t n_dims,
                               const uint64_t *dims, uint64_t offset, uint64_t *n) {
    mor__gguf_writer *w = base_writer();
    mor__gguf_w_raw_tensor(w, name, strlen(name), type, n_dims, dims, f32_data, sizeof f32_data,
                           offset);
    return finish(w, n);
}

// A small valid file with every value type, a nested array and five tensors. The last tensor's
// size is a multiple of 32, so the file ends exactly where its data ends.
static uint8_t *build_valid(uint64_t *n) {
    mor__gguf_writer *w = mor__gguf_writer_create();
    if (!w) return NULL;
    uint8_t u8 = 200;
    int8_t i8 = -100;
    uint16_t u16 = 60000;
    int16_t i16 = -30000;
    int64_t i64 = -5000000000ll;
    double f64 = 2.5;
    int ok = 1;
    ok &= !mor__gguf_w_str(w, "general.architecture", "llama");
    ok &= !mor__gguf_w_val(w, "t.u8", MOR__GGUF_UINT8, &u8);
    ok &= !mor__gguf_w_val(w, "t.i8", MOR__GGUF_INT8, &i8);
    ok &= !mor__gguf_w_val(w, "t.u16", MOR__GGUF_UINT16, &u16);
    ok &= !mor__gguf_w_val(w, "t.i16", MOR__GGUF_INT16, &i16);
    ok &= !mor__gguf_w_u32(w, "t.u32", 4000000000u);
    ok &= !mor__gguf_w_i32(w, "t.i32", -7);
    ok &= !mor__gguf_w_f32(w, "t.f32", 0.25f);
    ok &= !mor__gguf_w_bool(w, "t.bool", 1);
    ok &= !mor__gguf_w_str(w, "t.str", "h\xc3\xa9llo");
    ok &= !mor__gguf_w_u64(w, "t.u64", 123456789012ull);
    ok &= !mor__gguf_w_val(w, "t.i64", MOR__GGUF_INT64, &i64);
    ok &= !mor__gguf_w_val(w, "t.f64", MOR__GGUF_FLOAT64, &f64);
    static const float af[3] = {0.5f, -1.5f, 3.0f};
    static const int32_t ai[4] = {-1, 0, 1, 2147483647};
    static const uint32_t au[2] = {7, 4000000000u};
    static const uint8_t ab[3] = {1, 0, 1};
    static const int16_t ai16[2] = {-2, 3};
    static const double ad[2] = {1e300, -0.125};
    ok &= !mor__gguf_w_arr_f32(w, "a.f32", af, 3);
    ok &= !mor__gguf_w_arr_i32(w, "a.i32", ai, 4);
    ok &= !mor__gguf_w_arr_u32(w, "a.u32", au, 2);
    ok &= !mor__gguf_w_arr(w, "a.bool", MOR__GGUF_BOOL, ab, 3);
    ok &= !mor__gguf_w_arr(w, "a.i16", MOR__GGUF_INT16, ai16, 2);
    ok &= !mor__gguf_w_arr(w, "a.f64", MOR__GGUF_FLOAT64, ad, 2);
    ok &= !mor__gguf_w_arr(w, "a.empty", MOR__GGUF_UINT8, NULL, 0);
    static const char *const strs[4] = {"<s>", "", "\xe2\x96\x81the", "x"};
    ok &= !mor__gguf_w_arr_str(w, "a.str", strs, NULL, 4);
    static const uint32_t lens[2] = {3, 1};
    static const char *const strs2[2] = {"a\0b", "zzz"};
    ok &= !mor__gguf_w_arr_str(w, "a.str_n", strs2, lens, 2);
    // Nested: ARRAY of 2 ARRAYs of UINT8 ({1, 2} and {}).
    uint8_t nested[4 + 8 + (4 + 8 + 2) + (4 + 8)];
    put_u32(nested, MOR__GGUF_ARRAY);
    put_u64(nested + 4, 2);
    put_u32(nested + 12, MOR__GGUF_UINT8);
    put_u64(nested + 16, 2);
    nested[24] = 1;
    nested[25] = 2;
    put_u32(nested + 26, MOR__GGUF_UINT8);
    put_u64(nested + 30, 0);
    ok &= !mor__gguf_w_raw_kv(w, "a.nested", 8, MOR__GGUF_ARRAY, nested, sizeof nested);

    uint64_t d1[2] = {4, 3}, d2[1] = {8}, d3[3] = {2, 2, 2}, d4[2] = {32, 2}, d5[4] = {64, 1, 2, 1};
    uint16_t h[8] = {0x3c00, 0x4000, 0, 0x8000, 1, 2, 3, 4};
    uint16_t bf[8] = {0x3f80, 0x4000, 0, 0, 0, 0, 0, 0xbf80};
    uint8_t q8[2 * 34], q4[2 * 18 * 2];
    for (size_t i = 0; i < sizeof q8; i++) q8[i] = (uint8_t)(i * 7);
    for (size_t i = 0; i < sizeof q4; i++) q4[i] = (uint8_t)(i * 13 + 1);
    ok &= !mor__gguf_w_tensor(w, "f32", MOR__DT_F32, 2, d1, f32_data);
    ok &= !mor__gguf_w_tensor(w, "f16", MOR__DT_F16, 1, d2, h);
    ok &= !mor__gguf_w_tensor(w, "bf16", MOR__DT_BF16, 3, d3, bf);
    ok &= !mor__gguf_w_tensor(w, "q8_0", MOR__DT_Q8_0, 2, d4, q8);
    ok &= !mor__gguf_w_tensor(w, "q4_0.4d", MOR__DT_Q4_0, 4, d5, q4);
    uint64_t d6[1] = {32};
    ok &= !mor__gguf_w_tensor(w, "last", MOR__DT_F32, 1, d6, (const float[32]){0});
    if (!ok) {
        mor__gguf_writer_free(w);
        return NULL;
    }
    return finish(w, n);
}

// ---- writer ------------------------------------------------------------------------------------

TEST(writer_rejects_bad_arguments) {
    mor__gguf_writer *w = mor__gguf_writer_create();
    ASSERT(w != NULL);
    uint64_t d[2] = {4, 3}, d0[2] = {4, 0}, d33[1] = {33};
    ASSERT_STATUS(mor__gguf_w_u32(w, NULL, 1), MOR_E_INVALID);
    ASSERT_STATUS(mor__gguf_w_u32(w, "", 1), MOR_E_INVALID);
    ASSERT_STATUS(mor__gguf_w_str(w, "k", NULL), MOR_E_INVALID);
    ASSERT_STATUS(mor__gguf_w_arr(w, "k", MOR__GGUF_STRING, f32_data, 1), MOR_E_INVALID);
    ASSERT_STATUS(mor__gguf_w_val(w, "k", 99, f32_data), MOR_E_INVALID);
    ASSERT_STATUS(mor__gguf_w_tensor(w, "t", MOR__DT_F32, 0, d, f32_data), MOR_E_INVALID);
    ASSERT_STATUS(mor__gguf_w_tensor(w, "t", MOR__DT_F32, 5, d, f32_data), MOR_E_INVALID);
    ASSERT_STATUS(mor__gguf_w_tensor(w, "t", MOR__DT_F32, 2, d0, f32_data), MOR_E_INVALID);
    ASSERT_STATUS(mor__gguf_w_tensor(w, "t", 99, 2, d, f32_data), MOR_E_INVALID);
    ASSERT_STATUS(mor__gguf_w_tensor(w, "t", MOR__DT_Q8_0, 1, d33, f32_data), MOR_E_INVALID);
    ASSERT_STATUS(mor__gguf_w_tensor(w, "t", MOR__DT_F32, 2, d, NULL), MOR_E_INVALID);
    ASSERT_STATUS(mor__gguf_w_tensor(w, "", MOR__DT_F32, 2, d, f32_data), MOR_E_INVALID);
    char longname[80];
    memset(longname, 'n', sizeof longname - 1);
    longname[sizeof longname - 1] = 0;
    ASSERT_STATUS(mor__gguf_w_tensor(w, longname, MOR__DT_F32, 2, d, f32_data), MOR_E_INVALID);
    // Nothing was appended by the failed calls.
    ASSERT_EQ(mor__gguf_w_n_kv(w), 0);
    ASSERT_EQ(mor__gguf_w_n_tensors(w), 0);
    uint64_t n;
    uint8_t *img = mor__gguf_writer_finish(w, &n);
    mor__gguf_writer_free(w);
    ASSERT(img != NULL);
    ASSERT_EQ(n, 24);  // header only: no keys, no tensors, no padding
    ASSERT(memcmp(img, "GGUF\x03\0\0\0", 8) == 0);
    EXPECT_PARSE(img, n, MOR_OK, NULL);
}

TEST(writer_layout_matches_spec) {
    // Hand-check the bytes of a tiny file: one u32 key, one F32 tensor [2].
    mor__gguf_writer *w = mor__gguf_writer_create();
    ASSERT(w != NULL);
    uint64_t d[1] = {2};
    ASSERT_OK(mor__gguf_w_u32(w, "k", 0x01020304));
    ASSERT_OK(mor__gguf_w_tensor(w, "t", MOR__DT_F32, 1, d, f32_data));
    uint64_t n;
    uint8_t *img = finish(w, &n);
    ASSERT(img != NULL);
    static const uint8_t want_head[] = {
        'G', 'G', 'U', 'F', 3, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0,
        1, 0, 0, 0, 0, 0, 0, 0, 'k', 4, 0, 0, 0, 4, 3, 2, 1,                       // key
        1, 0, 0, 0, 0, 0, 0, 0, 't', 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0,          // name, dims
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,                                        // type, offset
    };
    ASSERT_EQ(sizeof want_head, 74);
    ASSERT_EQ(n, 96 + 32);  // header padded to 96, data 8 bytes padded to 32
    ASSERT(memcmp(img, want_head, sizeof want_head) == 0);
    for (size_t i = sizeof want_head; i < 96; i++) ASSERT_EQ(img[i], 0);
    ASSERT(memcmp(img + 96, f32_data, 8) == 0);
    for (size_t i = 104; i < n; i++) ASSERT_EQ(img[i], 0);
    free(img);
}

TEST(writer_save_matches_finish) {
    char path[] = "/tmp/mor-test-gguf-XXXXXX";
    int fd = mkstemp(path);
    ASSERT(fd >= 0);
    close(fd);
    mor__gguf_writer *w = mor__gguf_writer_create();
    ASSERT(w != NULL);
    ASSERT_OK(mor__gguf_w_str(w, "general.architecture", "llama"));
    ASSERT_OK(mor__gguf_w_u32(w, "general.alignment", 64));
    ASSERT_OK(add_f32(w, "a"));
    ASSERT_OK(add_f32(w, "b"));
    char err[256];
    ASSERT_OK(mor__gguf_writer_save(w, path, err, sizeof err));
    uint64_t n2;
    uint8_t *img2 = mor__gguf_writer_finish(w, &n2);
    mor__gguf_writer_free(w);
    void *file;
    uint64_t nf;
    ASSERT_OK(mor__gguf_w_read_file(path, &file, &nf, err, sizeof err));
    unlink(path);
    ASSERT_EQ(nf, n2);
    ASSERT(memcmp(file, img2, n2) == 0);
    free(file);
    free(img2);
    ASSERT_STATUS(mor__gguf_w_read_file("/nonexistent/x.gguf", &file, &nf, err, sizeof err),
                  MOR_E_IO);
    ASSERT_STR_CONTAINS(err, "/nonexistent/x.gguf");
    w = mor__gguf_writer_create();
    ASSERT_STATUS(mor__gguf_writer_save(w, "/nonexistent/dir/out.gguf", err, sizeof err), MOR_E_IO);
    ASSERT_STR_CONTAINS(err, "/nonexistent/dir/out.gguf");
    mor__gguf_writer_free(w);
}

// ---- valid files -------------------------------------------------------------------------------

static int str_is(mor__gguf_str s, const char *z, size_t n) {
    return s.len == n && memcmp(s.ptr, z, n) == 0;
}

TEST(roundtrip_every_type) {
    uint64_t n;
    uint8_t *img = build_valid(&n);
    ASSERT(img != NULL);
    mor__gguf g;
    char err[256] = "";
    int s = mor__gguf_parse(&g, img, n, err, sizeof err);
    if (s) {
        free(img);
        TEST__FAIL("parse failed: %s", err);
    }
    ASSERT_EQ(g.version, 3);
    ASSERT_EQ(g.alignment, 32);
    ASSERT_EQ(g.n_kv, 23);
    ASSERT_EQ(g.n_tensors, 6);
    uint32_t u;
    float f;
    int b;
    mor__gguf_str str;
    ASSERT_OK(mor__gguf_get_u32(&g, "t.u8", &u, err, sizeof err));
    ASSERT_EQ(u, 200);
    ASSERT_OK(mor__gguf_get_u32(&g, "t.u16", &u, err, sizeof err));
    ASSERT_EQ(u, 60000);
    ASSERT_OK(mor__gguf_get_u32(&g, "t.u32", &u, err, sizeof err));
    ASSERT_EQ(u, 4000000000u);
    ASSERT_STATUS(mor__gguf_get_u32(&g, "t.u64", &u, err, sizeof err), MOR_E_FORMAT);  // > 2^32
    ASSERT_STATUS(mor__gguf_get_u32(&g, "t.i8", &u, err, sizeof err), MOR_E_FORMAT);  // negative
    ASSERT_STR_CONTAINS(err, "t.i8");
    ASSERT_STATUS(mor__gguf_get_u32(&g, "t.absent", &u, err, sizeof err), MOR_E_NOT_FOUND);
    ASSERT_STATUS(mor__gguf_get_u32(&g, "t.str", &u, err, sizeof err), MOR_E_FORMAT);
    ASSERT_OK(mor__gguf_get_f32(&g, "t.f32", &f, err, sizeof err));
    ASSERT_EQ(f, 0.25f);
    ASSERT_OK(mor__gguf_get_f32(&g, "t.f64", &f, err, sizeof err));
    ASSERT_EQ(f, 2.5f);
    ASSERT_OK(mor__gguf_get_f32(&g, "t.i16", &f, err, sizeof err));
    ASSERT_EQ(f, -30000.0f);
    ASSERT_OK(mor__gguf_get_bool(&g, "t.bool", &b, err, sizeof err));
    ASSERT_EQ(b, 1);
    ASSERT_OK(mor__gguf_get_str(&g, "t.str", &str, err, sizeof err));
    ASSERT(str_is(str, "h\xc3\xa9llo", 6));

    // Raw scalar bytes of the wide types.
    const mor__gguf_kv *kv = mor__gguf_find_kv(&g, "t.i64");
    ASSERT(kv && kv->type == MOR__GGUF_INT64);
    int64_t i64;
    memcpy(&i64, kv->data, 8);
    ASSERT(i64 == -5000000000ll);
    kv = mor__gguf_find_kv(&g, "t.u64");
    ASSERT(kv && kv->type == MOR__GGUF_UINT64);
    uint64_t u64;
    memcpy(&u64, kv->data, 8);
    ASSERT(u64 == 123456789012ull);
    kv = mor__gguf_find_kv(&g, "t.i8");
    ASSERT(kv && kv->type == MOR__GGUF_INT8 && (int8_t)kv->data[0] == -100);

    // Arrays.
    uint32_t et;
    uint64_t an;
    ASSERT_OK(mor__gguf_get_arr(&g, "a.f32", &et, &an, err, sizeof err));
    ASSERT(et == MOR__GGUF_FLOAT32 && an == 3);
    float fa[3];
    ASSERT_OK(mor__gguf_arr_f32(&g, "a.f32", fa, 3, err, sizeof err));
    ASSERT(fa[0] == 0.5f && fa[1] == -1.5f && fa[2] == 3.0f);
    int32_t ia[4];
    ASSERT_OK(mor__gguf_arr_i32(&g, "a.i32", ia, 4, err, sizeof err));
    ASSERT(ia[0] == -1 && ia[1] == 0 && ia[2] == 1 && ia[3] == 2147483647);
    ASSERT_STATUS(mor__gguf_arr_i32(&g, "a.u32", ia, 2, err, sizeof err), MOR_E_FORMAT);  // 4e9
    ASSERT_OK(mor__gguf_arr_i32(&g, "a.i16", ia, 2, err, sizeof err));
    ASSERT(ia[0] == -2 && ia[1] == 3);
    ASSERT_STATUS(mor__gguf_arr_f32(&g, "a.f32", fa, 2, err, sizeof err), MOR_E_FORMAT);  // count
    kv = mor__gguf_find_kv(&g, "a.f64");
    ASSERT(kv && kv->arr_type == MOR__GGUF_FLOAT64 && kv->arr_n == 2);
    double dv;
    memcpy(&dv, kv->data + 8, 8);
    ASSERT(dv == -0.125);
    kv = mor__gguf_find_kv(&g, "a.bool");
    ASSERT(kv && kv->arr_type == MOR__GGUF_BOOL && kv->arr_n == 3 && kv->data[0] == 1 &&
           kv->data[1] == 0 && kv->data[2] == 1);
    ASSERT_OK(mor__gguf_get_arr(&g, "a.empty", &et, &an, err, sizeof err));
    ASSERT(et == MOR__GGUF_UINT8 && an == 0);
    ASSERT_OK(mor__gguf_get_arr(&g, "a.nested", &et, &an, err, sizeof err));
    ASSERT(et == MOR__GGUF_ARRAY && an == 2);
    kv = mor__gguf_find_kv(&g, "a.str");
    ASSERT(kv && kv->arr_type == MOR__GGUF_STRING && kv->arr_n == 4);
    ASSERT(str_is(mor__gguf_arr_str(&g, kv, 0), "<s>", 3));
    ASSERT(str_is(mor__gguf_arr_str(&g, kv, 1), "", 0));
    ASSERT(str_is(mor__gguf_arr_str(&g, kv, 2), "\xe2\x96\x81the", 6));
    ASSERT(str_is(mor__gguf_arr_str(&g, kv, 3), "x", 1));
    ASSERT(mor__gguf_arr_str(&g, kv, 4).ptr == NULL);  // out of range
    kv = mor__gguf_find_kv(&g, "a.str_n");
    ASSERT(kv && kv->arr_n == 2);
    ASSERT(str_is(mor__gguf_arr_str(&g, kv, 0), "a\0b", 3));
    ASSERT(str_is(mor__gguf_arr_str(&g, kv, 1), "z", 1));

    // Tensors: shapes, types, sizes, data pointers into the image, alignment.
    static const struct {
        const char *name;
        uint32_t    type, n_dims;
        uint64_t    d0, d1, d2, d3, n_elems, size;
    } want[6] = {
        {"f32", MOR__DT_F32, 2, 4, 3, 1, 1, 12, 48},
        {"f16", MOR__DT_F16, 1, 8, 1, 1, 1, 8, 16},
        {"bf16", MOR__DT_BF16, 3, 2, 2, 2, 1, 8, 16},
        {"q8_0", MOR__DT_Q8_0, 2, 32, 2, 1, 1, 64, 68},
        {"q4_0.4d", MOR__DT_Q4_0, 4, 64, 1, 2, 1, 128, 72},
        {"last", MOR__DT_F32, 1, 32, 1, 1, 1, 32, 128},
    };
    uint64_t prev_end = 0;
    for (int i = 0; i < 6; i++) {
        const mor__gguf_tensor *t = mor__gguf_find_tensor(&g, want[i].name);
        ASSERT(t != NULL);
        ASSERT(t == &g.tensors[i]);
        ASSERT_EQ(t->type, want[i].type);
        ASSERT_EQ(t->n_dims, want[i].n_dims);
        ASSERT_EQ(t->dims[0], want[i].d0);
        ASSERT_EQ(t->dims[1], want[i].d1);
        ASSERT_EQ(t->dims[2], want[i].d2);
        ASSERT_EQ(t->dims[3], want[i].d3);
        ASSERT_EQ(t->n_elems, want[i].n_elems);
        ASSERT_EQ(t->size, want[i].size);
        ASSERT_EQ(t->offset % 32, 0);
        ASSERT(t->offset >= g.data_offset && t->offset >= prev_end);
        ASSERT((const uint8_t *)t->data == img + t->offset);
        ASSERT_LE(t->offset + t->size, n);
        prev_end = t->offset + t->size;
    }
    ASSERT_EQ(g.data_offset % 32, 0);
    ASSERT_EQ(prev_end, n);
    ASSERT(memcmp(g.tensors[0].data, f32_data, 48) == 0);
    ASSERT_EQ(((const uint16_t *)g.tensors[1].data)[1], 0x4000);
    ASSERT_EQ(((const uint8_t *)g.tensors[3].data)[67], (uint8_t)(67 * 7));
    ASSERT_EQ(((const uint8_t *)g.tensors[4].data)[71], (uint8_t)(71 * 13 + 1));
    ASSERT(mor__gguf_find_tensor(&g, "nope") == NULL);
    mor__gguf_free(&g);
    free(img);
}

TEST(custom_alignment) {
    static const uint32_t aligns[] = {1, 8, 64, 4096};
    for (size_t k = 0; k < sizeof aligns / sizeof *aligns; k++) {
        uint32_t a = aligns[k];
        mor__gguf_writer *w = mor__gguf_writer_create();
        ASSERT(w != NULL);
        ASSERT_OK(add_f32(w, "first"));  // added before the key: layout still uses `a`
        ASSERT_OK(mor__gguf_w_u32(w, "general.alignment", a));
        uint64_t d[1] = {3};
        ASSERT_OK(mor__gguf_w_tensor(w, "odd", MOR__DT_F32, 1, d, f32_data));
        ASSERT_OK(add_f32(w, "third"));
        uint64_t n;
        uint8_t *img = finish(w, &n);
        ASSERT(img != NULL);
        mor__gguf g;
        char err[256];
        int s = mor__gguf_parse(&g, img, n, err, sizeof err);
        if (s) {
            free(img);
            TEST__FAIL("alignment %u: %s", a, err);
        }
        ASSERT_EQ(g.alignment, a);
        ASSERT_EQ(g.data_offset % a, 0);
        for (int i = 0; i < 3; i++) {
            ASSERT_EQ(g.tensors[i].offset % a, 0);
            ASSERT((const uint8_t *)g.tensors[i].data == img + g.tensors[i].offset);
        }
        ASSERT(memcmp(g.tensors[1].data, f32_data, 12) == 0);
        ASSERT(memcmp(g.tensors[2].data, f32_data, 48) == 0);
        // Padding between tensors is zero.
        for (uint64_t i = g.tensors[1].offset + 12; i < g.tensors[2].offset; i++) ASSERT_EQ(img[i], 0);
        mor__gguf_free(&g);
        free(img);
    }
}

TEST(version_2_and_empty_file_accepted) {
    mor__gguf_writer *w = base_writer();
    ASSERT(w != NULL);
    mor__gguf_w_set_version(w, 2);
    ASSERT_OK(add_f32(w, "t"));
    uint64_t n;
    EXPECT_PARSE(finish(w, &n), n, MOR_OK, NULL);
    // No keys, no tensors.
    w = mor__gguf_writer_create();
    EXPECT_PARSE(finish(w, &n), n, MOR_OK, NULL);
    // Limits that are exactly allowed: key of 65535 bytes, tensor name of 64 bytes.
    char *key = malloc(65536);
    ASSERT(key != NULL);
    memset(key, 'k', 65535);
    key[65535] = 0;
    char name[65];
    memset(name, 'n', 64);
    name[64] = 0;
    w = mor__gguf_writer_create();
    ASSERT_OK(mor__gguf_w_u32(w, key, 1));
    ASSERT_OK(add_f32(w, name));
    free(key);
    EXPECT_PARSE(finish(w, &n), n, MOR_OK, NULL);
}

TEST(real_model_file) {
    char path[512];
    void *img;
    uint64_t n;
    char err[256];
    ASSERT_OK(mor__gguf_w_read_file(test_path(path, sizeof path, "stories260K.gguf"), &img, &n, err,
                                    sizeof err));
    mor__gguf g;
    int s = mor__gguf_parse(&g, img, n, err, sizeof err);
    if (s) {
        free(img);
        TEST__FAIL("%s", err);
    }
    ASSERT_EQ(g.n_tensors, 48);
    ASSERT_EQ(g.n_kv, 19);
    ASSERT_EQ(g.data_offset, 14176);
    const mor__gguf_tensor *t = mor__gguf_find_tensor(&g, "blk.4.ffn_norm.weight");
    ASSERT(t && t->offset + t->size == n);
    uint32_t u;
    ASSERT_OK(mor__gguf_get_u32(&g, "llama.block_count", &u, err, sizeof err));
    ASSERT_EQ(u, 5);
    mor__gguf_free(&g);
    free(img);
}

// ---- malformed: header -------------------------------------------------------------------------

TEST(missing_or_empty_data) {
    mor__gguf g;
    char err[256] = "";
    ASSERT_STATUS(mor__gguf_parse(&g, NULL, 0, err, sizeof err), MOR_E_FORMAT);
    mor__gguf_free(&g);
    ASSERT_STATUS(mor__gguf_parse(&g, NULL, 100, err, sizeof err), MOR_E_INVALID);
    mor__gguf_free(&g);
    uint8_t three[3] = {'G', 'G', 'U'};
    ASSERT_STATUS(mor__gguf_parse(&g, three, 3, err, sizeof err), MOR_E_FORMAT);
    mor__gguf_free(&g);
    // No error buffer at all must be fine too.
    ASSERT_STATUS(mor__gguf_parse(&g, three, 3, NULL, 0), MOR_E_FORMAT);
    mor__gguf_free(&g);
}

TEST(bad_magic) {
    uint64_t n;
    uint8_t *img = build_valid(&n);
    ASSERT(img != NULL);
    img[0] = 'F';
    EXPECT_PARSE(img, n, MOR_E_FORMAT, "magic");
    img = build_valid(&n);
    ASSERT(img != NULL);
    memcpy(img, "GGML", 4);
    EXPECT_PARSE(img, n, MOR_E_FORMAT, "magic");
}

TEST(unsupported_versions) {
    static const uint32_t bad[] = {0, 1, 4, 99, 0x03000000u};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        uint64_t n;
        uint8_t *img = build_valid(&n);
        ASSERT(img != NULL);
        put_u32(img + 4, bad[i]);
        EXPECT_PARSE(img, n, MOR_E_UNSUPPORTED, "version");
    }
}

TEST(truncated_at_every_length) {
    uint64_t n;
    uint8_t *img = build_valid(&n);
    ASSERT(img != NULL);
    // Each prefix in its own exact-size buffer, so that ASan sees any read past the end.
    int bad = 0;
    for (uint64_t len = 0; len < n; len++) {
        uint8_t *p = malloc(len ? len : 1);
        ASSERT(p != NULL);
        memcpy(p, img, len);
        int s = parse_status(p, len);
        free(p);
        if (s != MOR_E_FORMAT) {
            printf("#   prefix of %llu bytes: %s (%s)\n", (unsigned long long)len, mor_status_name(s),
                   parse_err);
            bad++;
        }
        if (len == n - 1) ASSERT_STR_CONTAINS(parse_err, "last");  // names the tensor
    }
    free(img);
    ASSERT_EQ(bad, 0);
}

TEST(counts_too_large) {
    uint64_t n;
    uint8_t *img = build_valid(&n);
    ASSERT(img != NULL);
    put_u64(img + 8, (uint64_t)1 << 40);
    EXPECT_PARSE(img, n, MOR_E_FORMAT, "tensor count");
    img = build_valid(&n);
    put_u64(img + 16, UINT64_MAX);
    EXPECT_PARSE(img, n, MOR_E_FORMAT, "key count");
    // Within the caps but more than the file can hold.
    img = build_valid(&n);
    put_u64(img + 16, 60000);
    EXPECT_PARSE(img, n, MOR_E_FORMAT, NULL);
    img = build_valid(&n);
    put_u64(img + 8, 65536);
    EXPECT_PARSE(img, n, MOR_E_FORMAT, NULL);
}

// ---- malformed: keys ---------------------------------------------------------------------------

TEST(string_length_past_end) {
    uint8_t v[8 + 3];
    put_u64(v, 1000);
    memcpy(v + 8, "abc", 3);
    mor__gguf_writer *w = base_writer();
    mor__gguf_w_raw_kv(w, "bad.str", 7, MOR__GGUF_STRING, v, sizeof v);
    uint64_t n;
    EXPECT_PARSE(finish(w, &n), n, MOR_E_FORMAT, "string");
    // FORMAT.md §1: the message names the key.
    ASSERT_STR_CONTAINS(parse_err, "bad.str");
    // Above the 16 MiB limit, even if the file were large enough.
    put_u64(v, (16u << 20) + 1);
    w = base_writer();
    mor__gguf_w_raw_kv(w, "bad.str", 7, MOR__GGUF_STRING, v, sizeof v);
    EXPECT_PARSE(finish(w, &n), n, MOR_E_FORMAT, "limit");
    // Key string length past the end.
    w = base_writer();
    uint8_t *img = finish(w, &n);
    ASSERT(img != NULL);
    put_u64(img + 24, UINT64_MAX - 3);
    EXPECT_PARSE(img, n, MOR_E_FORMAT, "key");
}

TEST(array_length_bad) {
    static const uint64_t counts[] = {1000, (uint64_t)1 << 32, (uint64_t)1 << 62, UINT64_MAX};
    static const uint32_t types[] = {MOR__GGUF_UINT8, MOR__GGUF_UINT32, MOR__GGUF_FLOAT64,
                                     MOR__GGUF_STRING, MOR__GGUF_ARRAY};
    for (size_t c = 0; c < sizeof counts / sizeof *counts; c++) {
        for (size_t t = 0; t < sizeof types / sizeof *types; t++) {
            uint8_t v[12 + 16] = {0};
            put_u32(v, types[t]);
            put_u64(v + 4, counts[c]);
            mor__gguf_writer *w = base_writer();
            mor__gguf_w_raw_kv(w, "bad.arr", 7, MOR__GGUF_ARRAY, v, sizeof v);
            ASSERT_OK(add_f32(w, "t"));
            uint64_t n;
            EXPECT_PARSE(finish(w, &n), n, MOR_E_FORMAT, "bad.arr");
        }
    }
    // Just over the 64 Mi element limit, with the bytes actually present.
    uint64_t big = (64u << 20) + 1;
    uint8_t *v = calloc(1, 12 + big);
    ASSERT(v != NULL);
    put_u32(v, MOR__GGUF_UINT8);
    put_u64(v + 4, big);
    mor__gguf_writer *w = base_writer();
    mor__gguf_w_raw_kv(w, "big.arr", 7, MOR__GGUF_ARRAY, v, 12 + big);
    free(v);
    uint64_t n;
    EXPECT_PARSE(finish(w, &n), n, MOR_E_FORMAT, "limit");
}

TEST(key_too_long_or_empty) {
    char *key = malloc(65537);
    ASSERT(key != NULL);
    memset(key, 'k', 65536);
    key[65536] = 0;
    mor__gguf_writer *w = mor__gguf_writer_create();
    ASSERT_OK(mor__gguf_w_u32(w, key, 1));
    free(key);
    uint64_t n;
    EXPECT_PARSE(finish(w, &n), n, MOR_E_FORMAT, "key");
    uint32_t one = 1;
    w = base_writer();
    mor__gguf_w_raw_kv(w, "", 0, MOR__GGUF_UINT32, &one, 4);
    EXPECT_PARSE(finish(w, &n), n, MOR_E_FORMAT, "empty");
}

TEST(duplicate_key) {
    mor__gguf_writer *w = base_writer();
    ASSERT_OK(mor__gguf_w_u32(w, "dup.key", 1));
    ASSERT_OK(mor__gguf_w_f32(w, "other", 1));
    ASSERT_OK(mor__gguf_w_str(w, "dup.key", "x"));
    uint64_t n;
    EXPECT_PARSE(finish(w, &n), n, MOR_E_FORMAT, "dup.key");
    ASSERT_STR_CONTAINS(parse_err, "duplicate");
}

TEST(bad_value_type) {
    uint8_t v[16] = {0};
    mor__gguf_writer *w = base_writer();
    mor__gguf_w_raw_kv(w, "bad.type", 8, 13, v, 4);
    uint64_t n;
    EXPECT_PARSE(finish(w, &n), n, MOR_E_FORMAT, "bad.type");
    ASSERT_STR_CONTAINS(parse_err, "13");
    w = base_writer();
    mor__gguf_w_raw_kv(w, "bad.type", 8, 0xffffffffu, v, 4);
    EXPECT_PARSE(finish(w, &n), n, MOR_E_FORMAT, "bad.type");
    // Array element type out of range.
    put_u32(v, 13);
    put_u64(v + 4, 1);
    w = base_writer();
    mor__gguf_w_raw_kv(w, "bad.elem", 8, MOR__GGUF_ARRAY, v, 16);
    EXPECT_PARSE(finish(w, &n), n, MOR_E_FORMAT, "bad.elem");
}

TEST(bool_not_0_or_1) {
    uint8_t two = 2;
    mor__gguf_writer *w = base_writer();
    mor__gguf_w_raw_kv(w, "bad.bool", 8, MOR__GGUF_BOOL, &two, 1);
    uint64_t n;
    EXPECT_PARSE(finish(w, &n), n, MOR_E_FORMAT, "bad.bool");
    ASSERT_STR_CONTAINS(parse_err, "BOOL");
    uint8_t v[12 + 3];
    put_u32(v, MOR__GGUF_BOOL);
    put_u64(v + 4, 3);
    v[12] = 1, v[13] = 0, v[14] = 255;
    w = base_writer();
    mor__gguf_w_raw_kv(w, "bad.bools", 9, MOR__GGUF_ARRAY, v, sizeof v);
    EXPECT_PARSE(finish(w, &n), n, MOR_E_FORMAT, "bad.bools");
}

TEST(arrays_nested_too_deep) {
    // ARRAY of 1 ARRAY of 1 ARRAY of 0 UINT8: depth 3.
    uint8_t v[3 * 12];
    put_u32(v, MOR__GGUF_ARRAY);
    put_u64(v + 4, 1);
    put_u32(v + 12, MOR__GGUF_ARRAY);
    put_u64(v + 16, 1);
    put_u32(v + 24, MOR__GGUF_UINT8);
    put_u64(v + 28, 0);
    mor__gguf_writer *w = base_writer();
    mor__gguf_w_raw_kv(w, "deep", 4, MOR__GGUF_ARRAY, v, sizeof v);
    uint64_t n;
    EXPECT_PARSE(finish(w, &n), n, MOR_E_FORMAT, "deep");
}

TEST(alignment_key_invalid) {
    static const uint32_t bad[] = {0, 3, 48, 1u << 21, 0x80000000u};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        mor__gguf_writer *w = base_writer();
        ASSERT_OK(mor__gguf_w_u32(w, "general.alignment", bad[i]));
        ASSERT_OK(add_f32(w, "t"));
        uint64_t n;
        EXPECT_PARSE(finish(w, &n), n, MOR_E_FORMAT, "general.alignment");
    }
    // Wrong types: INT32 32, UINT64 32, STRING "32".
    mor__gguf_writer *w = base_writer();
    ASSERT_OK(mor__gguf_w_i32(w, "general.alignment", 32));
    uint64_t n;
    EXPECT_PARSE(finish(w, &n), n, MOR_E_FORMAT, "general.alignment");
    w = base_writer();
    ASSERT_OK(mor__gguf_w_u64(w, "general.alignment", 32));
    EXPECT_PARSE(finish(w, &n), n, MOR_E_FORMAT, "general.alignment");
    w = base_writer();
    ASSERT_OK(mor__gguf_w_str(w, "general.alignment", "32"));
    EXPECT_PARSE(finish(w, &n), n, MOR_E_FORMAT, "general.alignment");
}

// ---- malformed: tensors ------------------------------------------------------------------------

TEST(tensor_n_dims_out_of_range) {
    uint64_t dims[8] = {4, 3, 1, 1, 1, 1, 1, 1};
    static const uint32_t bad[] = {0, 5, 8};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        uint64_t n;
        EXPECT_PARSE(one_raw_tensor("tens.nd", MOR__DT_F32, bad[i], dims, MOR__GGUF_W_AUTO, &n), n,
                     MOR_E_FORMAT, "tens.nd");
    }
    // A huge n_dims with few bytes behind it: patch the field of a valid record. The tensor
    // info starts after the header (24 bytes) and base_writer's key (8 + 20 + 4 + 8 + 5).
    uint64_t n;
    uint8_t *img = one_raw_tensor("tens.nd", MOR__DT_F32, 2, dims, MOR__GGUF_W_AUTO, &n);
    ASSERT(img != NULL);
    size_t at = 24 + 45 + 8 + 7;
    ASSERT_EQ(img[at], 2);
    put_u32(img + at, 0xffffffffu);
    EXPECT_PARSE(img, n, MOR_E_FORMAT, "tens.nd");
}

TEST(tensor_zero_dim) {
    uint64_t dims[3] = {4, 0, 3};
    uint64_t n;
    EXPECT_PARSE(one_raw_tensor("tens.zero", MOR__DT_F32, 3, dims, MOR__GGUF_W_AUTO, &n), n,
                 MOR_E_FORMAT, "tens.zero");
}

TEST(tensor_dim_product_overflow) {
    uint64_t n;
    uint64_t d1[2] = {(uint64_t)1 << 40, (uint64_t)1 << 40};
    EXPECT_PARSE(one_raw_tensor("tens.big", MOR__DT_F32, 2, d1, MOR__GGUF_W_AUTO, &n), n,
                 MOR_E_FORMAT, "tens.big");
    uint64_t d2[4] = {(uint64_t)1 << 16, (uint64_t)1 << 16, (uint64_t)1 << 16, (uint64_t)1 << 16};
    EXPECT_PARSE(one_raw_tensor("tens.big", MOR__DT_F32, 4, d2, MOR__GGUF_W_AUTO, &n), n,
                 MOR_E_FORMAT, "tens.big");
    uint64_t d3[2] = {UINT64_MAX, 2};
    EXPECT_PARSE(one_raw_tensor("tens.big", MOR__DT_F32, 2, d3, MOR__GGUF_W_AUTO, &n), n,
                 MOR_E_FORMAT, "tens.big");
    // Element count fine, byte size far past the end of the file.
    uint64_t d4[2] = {(uint64_t)1 << 20, (uint64_t)1 << 18};
    EXPECT_PARSE(one_raw_tensor("tens.big", MOR__DT_F32, 2, d4, MOR__GGUF_W_AUTO, &n), n,
                 MOR_E_FORMAT, "tens.big");
}

TEST(tensor_type_unknown) {
    uint64_t dims[2] = {4, 3};
    static const uint32_t bad[] = {4, 5, 31, 99, 0xffffffffu};  // 4, 5: removed Q4_2/Q4_3
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        uint64_t n;
        EXPECT_PARSE(one_raw_tensor("tens.type", bad[i], 2, dims, MOR__GGUF_W_AUTO, &n), n,
                     MOR_E_FORMAT, "tens.type");
    }
}

// FORMAT.md §1: the reader accepts every tensor type GGUF defines (it knows their sizes);
// the model loader is what refuses types it cannot compute with (MOR_E_UNSUPPORTED naming the
// type, see test-load.c). Block sizes are still checked here.
TEST(tensor_type_known_unsupported) {
    static const struct {
        uint32_t    id;
        const char *name;
        uint64_t    d0, size;  // elements, and their bytes
    } known[] = {{12, "Q4_K", 256, 144}, {14, "Q6_K", 256, 210}, {3, "Q4_1", 32, 20}, {28, "F64", 4, 32}};
    for (size_t i = 0; i < sizeof known / sizeof *known; i++) {
        uint64_t dims[1] = {known[i].d0};
        mor__gguf_writer *w = base_writer();
        uint8_t *data = calloc(1, 4096);
        ASSERT(data != NULL);
        uint64_t sz = mor__dtype_size(known[i].id, known[i].d0);
        ASSERT_EQ(sz, known[i].size);
        mor__gguf_w_raw_tensor(w, "tens.q", 6, known[i].id, 1, dims, data, sz, MOR__GGUF_W_AUTO);
        free(data);
        uint64_t n;
        uint8_t *img = finish(w, &n);
        ASSERT(img != NULL);
        EXPECT_PARSE(img, n, MOR_OK, NULL);
        ASSERT(strcmp(mor__dtype_name(known[i].id), known[i].name) == 0);
    }
}

TEST(tensor_block_size_mismatch) {
    uint64_t dims[2] = {33, 2};
    uint64_t n;
    EXPECT_PARSE(one_raw_tensor("tens.blk", MOR__DT_Q8_0, 2, dims, MOR__GGUF_W_AUTO, &n), n,
                 MOR_E_FORMAT, "tens.blk");
}

TEST(tensor_offset_misaligned) {
    uint64_t dims[2] = {4, 3};
    uint64_t n;
    EXPECT_PARSE(one_raw_tensor("tens.off", MOR__DT_F32, 2, dims, 4, &n), n, MOR_E_FORMAT,
                 "tens.off");
    ASSERT_STR_CONTAINS(parse_err, "align");
    EXPECT_PARSE(one_raw_tensor("tens.off", MOR__DT_F32, 2, dims, 33, &n), n, MOR_E_FORMAT,
                 "tens.off");
}

TEST(tensor_data_past_end) {
    uint64_t dims[2] = {4, 3};
    uint64_t n;
    // Offset aligned, but past the end of the file.
    EXPECT_PARSE(one_raw_tensor("tens.end", MOR__DT_F32, 2, dims, 1 << 20, &n), n, MOR_E_FORMAT,
                 "tens.end");
    // Offset + size wrapping around 2^64.
    EXPECT_PARSE(one_raw_tensor("tens.end", MOR__DT_F32, 2, dims, UINT64_MAX - 31, &n), n,
                 MOR_E_FORMAT, "tens.end");
    // The data starts inside the file but its last bytes are missing.
    mor__gguf_writer *w = base_writer();
    ASSERT_OK(add_f32(w, "tens.end"));
    uint8_t *img = finish(w, &n);
    ASSERT(img != NULL);
    EXPECT_PARSE(img, n - 64 + 47, MOR_E_FORMAT, "tens.end");  // 47 of its 48 bytes present
}

TEST(tensor_name_bad) {
    mor__gguf_writer *w = base_writer();
    ASSERT_OK(add_f32(w, "dup.tensor"));
    ASSERT_OK(add_f32(w, "other"));
    ASSERT_OK(add_f32(w, "dup.tensor"));
    uint64_t n;
    EXPECT_PARSE(finish(w, &n), n, MOR_E_FORMAT, "dup.tensor");
    ASSERT_STR_CONTAINS(parse_err, "duplicate");
    uint64_t dims[2] = {4, 3};
    char name[66];
    memset(name, 'x', 65);
    name[65] = 0;
    EXPECT_PARSE(one_raw_tensor(name, MOR__DT_F32, 2, dims, MOR__GGUF_W_AUTO, &n), n, MOR_E_FORMAT,
                 "tensor name");
    EXPECT_PARSE(one_raw_tensor("", MOR__DT_F32, 2, dims, MOR__GGUF_W_AUTO, &n), n, MOR_E_FORMAT,
                 "empty");
}

// ---- random mutations --------------------------------------------------------------------------

// Flips bytes of a valid file (and sometimes cuts it short or overwrites a length field with an
// extreme value); the parser must return OK or an error, never crash or read out of bounds,
// and a successful parse must describe tensors that lie inside the image.
TEST(random_mutations) {
    uint64_t n;
    uint8_t *orig = build_valid(&n);
    ASSERT(orig != NULL);
    uint64_t seed = test_seed();
    int n_ok = 0, n_err = 0, bad = 0;
    for (int it = 0; it < 2000 && !bad; it++) {
        uint64_t len = n;
        uint64_t r = test_rand(&seed);
        if (r % 8 == 0) len = test_rand(&seed) % n;
        uint8_t *p = malloc(len ? len : 1);
        ASSERT(p != NULL);
        memcpy(p, orig, len);
        int flips = 1 + (int)(test_rand(&seed) % 4);
        for (int k = 0; k < flips && len; k++) {
            uint64_t at = test_rand(&seed) % len;
            switch (test_rand(&seed) % 4) {
            case 0: p[at] ^= (uint8_t)(1u << (test_rand(&seed) % 8)); break;
            case 1: p[at] = (uint8_t)test_rand(&seed); break;
            case 2: p[at] = 0xff; break;
            default:  // an extreme 64-bit value at a random place
                if (len >= 8) {
                    uint64_t v = test_rand(&seed) >> (test_rand(&seed) % 64);
                    put_u64(p + test_rand(&seed) % (len - 7), v);
                }
                break;
            }
        }
        mor__gguf g;
        char err[256];
        int s = mor__gguf_parse(&g, p, len, err, sizeof err);
        if (s == MOR_OK) {
            n_ok++;
            for (uint64_t i = 0; i < g.n_tensors; i++) {
                const mor__gguf_tensor *t = &g.tensors[i];
                if (t->offset + t->size > len || t->offset + t->size < t->offset ||
                    (const uint8_t *)t->data != p + t->offset || t->offset % g.alignment)
                    bad = 1;
            }
        } else {
            n_err++;
            if (s != MOR_E_FORMAT && s != MOR_E_UNSUPPORTED) bad = 2;
            if (!err[0]) bad = 3;
        }
        mor__gguf_free(&g);
        free(p);
        if (bad)
            printf("#   iteration %d: bad=%d status %s (%s)\n", it, bad, mor_status_name(s), err);
    }
    free(orig);
    printf("#   2000 mutations: %d parsed, %d refused\n", n_ok, n_err);
    ASSERT_EQ(bad, 0);
}


// The first key or tensor name that repeats an earlier one is reported, however far apart.
TEST(duplicates_far_apart) {
    mor__gguf_writer *w = base_writer();
    static const char *const keys[] = {"z.first", "dup.b", "a.other", "dup.a", "dup.b", "dup.a"};
    for (int i = 0; i < 6; i++) ASSERT_OK(mor__gguf_w_u32(w, keys[i], (uint32_t)i));
    uint64_t n;
    EXPECT_PARSE(finish(w, &n), n, MOR_E_FORMAT, "duplicate metadata key 'dup.b'");
    w = base_writer();
    static const char *const names[] = {"t.z", "t.dup1", "t.a", "t.dup2", "t.dup2", "t.dup1"};
    for (int i = 0; i < 6; i++) ASSERT_OK(add_f32(w, names[i]));
    EXPECT_PARSE(finish(w, &n), n, MOR_E_FORMAT, "duplicate tensor name 't.dup2'");
}

// Strings are length-delimited and may hold any byte; a caller that wants a C string asks
// mor__gguf_get_cstr, which refuses an embedded NUL, naming the key.
TEST(string_with_nul) {
    mor__gguf_writer *w = base_writer();
    ASSERT_OK(mor__gguf_w_str_n(w, "general.name", "cycle\0junk", 10));
    ASSERT_OK(mor__gguf_w_str(w, "general.clean", "cycle"));
    uint64_t n;
    uint8_t *img = finish(w, &n);
    ASSERT(img != NULL);
    mor__gguf g;
    char err[256] = "";
    ASSERT_OK(mor__gguf_parse(&g, img, n, err, sizeof err));
    mor__gguf_str s;
    ASSERT_OK(mor__gguf_get_str(&g, "general.name", &s, err, sizeof err));
    ASSERT_EQ(s.len, 10);
    ASSERT_STATUS(mor__gguf_get_cstr(&g, "general.name", &s, err, sizeof err), MOR_E_FORMAT);
    ASSERT_STR_CONTAINS(err, "key 'general.name': the string value holds a NUL byte at position 5 of 10");
    ASSERT_OK(mor__gguf_get_cstr(&g, "general.clean", &s, err, sizeof err));
    ASSERT_EQ(s.len, 5);
    ASSERT_STATUS(mor__gguf_get_cstr(&g, "general.absent", &s, err, sizeof err), MOR_E_NOT_FOUND);
    ASSERT_STATUS(mor__gguf_get_cstr(&g, "general.architecture", &s, err, sizeof err), MOR_OK);
    mor__gguf_free(&g);
    free(img);
}

// Lookups are binary searches of an index the parser sorts once: finding each of n keys and n
// tensors, and as many absent names, costs O(n log n) name comparisons in all (a scan per
// lookup costs about n^2 / 2 for the hits alone). Counted, not timed.
TEST(lookups_are_logarithmic) {
    enum { N = 4096, LOG2N = 12 };
    mor__gguf_writer *w = mor__gguf_writer_create();
    ASSERT(w != NULL);
    char name[64];
    uint64_t d[1] = {1};
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof name, "key.%d", i);
        ASSERT_OK(mor__gguf_w_u32(w, name, (uint32_t)i));
        snprintf(name, sizeof name, "blk.%d.weight", i);
        ASSERT_OK(mor__gguf_w_tensor(w, name, MOR__DT_F32, 1, d, f32_data));
    }
    uint64_t n;
    uint8_t *img = finish(w, &n);
    ASSERT(img != NULL);
    mor__gguf g;
    char err[256];
    uint64_t c0 = mor__gguf_name_compares();
    ASSERT_OK(mor__gguf_parse(&g, img, n, err, sizeof err));
    uint64_t c1 = mor__gguf_name_compares();
    int found = 0;
    for (int i = 0; i < N; i++) {
        uint32_t v = 0;
        snprintf(name, sizeof name, "key.%d", i);
        found += mor__gguf_get_u32(&g, name, &v, err, sizeof err) == MOR_OK && v == (uint32_t)i;
        snprintf(name, sizeof name, "blk.%d.weight", i);
        const mor__gguf_tensor *t = mor__gguf_find_tensor(&g, name);
        found += t && t == &g.tensors[i];
        snprintf(name, sizeof name, "blk.%d.absent", i);
        found -= mor__gguf_find_tensor(&g, name) != NULL;
        found -= mor__gguf_find_kv(&g, name) != NULL;
    }
    uint64_t c2 = mor__gguf_name_compares();
    mor__gguf_free(&g);
    free(img);
    ASSERT_EQ(found, 2 * N);
    printf("#   %d keys + %d tensors: %llu comparisons to index, %llu for %d lookups\n", N, N,
           (unsigned long long)(c1 - c0), (unsigned long long)(c2 - c1), 4 * N);
    ASSERT_LE(c1 - c0, 2ull * 2 * N * LOG2N);        // two merge sorts and the duplicate scans
    ASSERT_LE(c2 - c1, 4ull * N * (LOG2N + 2));      // 4N binary searches
}

static const test_entry tests_[] = {
    TEST_LIST(writer_rejects_bad_arguments, writer_layout_matches_spec, writer_save_matches_finish,
              roundtrip_every_type, custom_alignment, version_2_and_empty_file_accepted,
              real_model_file, missing_or_empty_data, bad_magic, unsupported_versions,
              truncated_at_every_length, counts_too_large, string_length_past_end,
              array_length_bad, key_too_long_or_empty, duplicate_key)
    TEST_LIST(bad_value_type, bool_not_0_or_1, arrays_nested_too_deep, alignment_key_invalid,
              tensor_n_dims_out_of_range, tensor_zero_dim, tensor_dim_product_overflow,
              tensor_type_unknown, tensor_type_known_unsupported, tensor_block_size_mismatch,
              tensor_offset_misaligned, tensor_data_past_end, tensor_name_bad, random_mutations)
    TEST_LIST(duplicates_far_apart, string_with_nul, lookups_are_logarithmic)
};
TEST_MAIN_LIST(tests_)
