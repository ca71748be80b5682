/* Fused dequantize-GEMV for fp8 (E4M3) and mxfp4 (E2M1) weights on AVX-512 CPUs.
 *
 * y[m, n] = sum_k x[m, k] * w[n, k] with w[n, k] = value(code[n, k]) * scale[n, k / block], for a few
 * rows of x (decode).  Each thread takes blocks of NB output rows; their weights are decoded CHUNK
 * columns at a time into a buffer that stays in L1 (the weight the format's reference builds: one
 * float32 product of two exact factors, rounded once into x's dtype) and dotted with every row of x,
 * NB rows of weight per load of x.  The packed bytes are read from memory once per call (once per
 * MS rows of x) and no dequantized copy of the weight is ever written.
 *
 * x in bfloat16 (what the engines run): the chunk is stored as bfloat16 and multiplied with
 * vdpbf16ps (AVX512-BF16), whose products are exact and whose sums are float32 -- the same numbers
 * as rounding the weight to bfloat16 and running a bfloat16 GEMM with float32 accumulation.  Built
 * only where the compiler is given -mavx512bf16 (MPQ_BF16); the caller asks `mpq_fused_has_bf16`.
 * x in float32: float32 fused multiply-adds on the float32 weight.
 * y: float32, or bfloat16 rounded once from the float32 sum (y_bf16), what F.linear in bfloat16 returns.
 *
 * Codes:
 *   E4M3 (fp8, mxfp8): byte `s eeee mmm` shifted into float16 bits `s 0eeee mmm0000000` is the value
 *     times 2^-8, subnormals included; the caller's scales carry the 2^8.  `lut` holds the same
 *     value * 2^-8 per byte for the scalar tail.
 *   E2M1 (mxfp4): two codes per byte, low nibble first; `lut` holds the 16 values.
 *   I8 (int8): the byte as a signed integer (exact in bfloat16); `lut` holds the 256 values by byte.
 * Scales: float32, row n's at scales + n * scale_row_stride (stride 0: one row for every n), one per
 * `block` columns.  The vector path needs block % 16 == 0 (the caller checks); columns past the last
 * multiple of 32 go through the scalar tail.
 * Threads: OpenMP, linked against the libgomp torch already loaded, so torch's pool is reused.
 */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#define CHUNK 1024 /* columns decoded per pass: NB rows of them stay in L1 */
#define NB 4       /* weight rows per pass: each load of x feeds NB accumulators */
#define TM 4       /* rows of x per register tile: TM * NB accumulators */
#define MS 16      /* rows of x per decode pass; more rows decode the weight again per MS */
#ifndef PREFETCH_HINT
#define PREFETCH_HINT _MM_HINT_T0
#endif

enum { CODE_E4M3 = 0, CODE_E2M1 = 1, CODE_I8 = 2 };

/* How the bfloat16 path applies the scales (the float32 path always multiplies each decoded vector). */
enum {
    SCALE_EACH = 0, /* float32 scale per block (fp8 128x128): decode, multiply in float32, round to bf16 */
    SCALE_ROW = 1,  /* one scale per row (fp8 per-tensor / per-channel): bf16 codes, the sum times the scale */
    SCALE_POW2 = 2, /* MX E8M0 scale per 32 columns: bf16 codes, exponent field + log2(scale), exact */
};

typedef struct {
    int code;
    const uint8_t *weight;
    int64_t row_bytes;
    const float *scales;
    int64_t scale_row_stride;
    int64_t block;
    const float *lut;
    __m512 lut16;
    int scale_mode;
    const int16_t *exp7;  /* SCALE_POW2: log2(scale) << 7 per (row, 32 columns) */
    __m512i table[4];     /* bf16 bits of the codes: E4M3 magnitudes 0..127 (4 x 32), E2M1 0..15 (1 x 32) */
} weights_t;

static inline float scalar_code(const weights_t *w, int64_t n, int64_t k) {
    const uint8_t *row = w->weight + n * w->row_bytes;
    if (w->code != CODE_E2M1) return w->lut[row[k]];
    uint8_t b = row[k >> 1];
    return w->lut[(k & 1) ? (b >> 4) : (b & 0x0F)];
}

static inline float scalar_weight(const weights_t *w, int64_t n, int64_t k) {
    return scalar_code(w, n, k) * w->scales[n * w->scale_row_stride + k / w->block];
}

/* 16 unscaled values of one row from column k (k % 16 == 0); `code` is a constant after inlining. */
static inline __attribute__((always_inline)) __m512 decode16(int code, const uint8_t *row, int64_t k, __m512 lut16) {
    if (code == CODE_E4M3) {
        __m256i h = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(row + k)));
        return _mm512_cvtph_ps(_mm256_and_si256(_mm256_slli_epi16(h, 7), _mm256_set1_epi16((short)0xBF80)));
    }
    if (code == CODE_I8) return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(row + k))));
    __m128i b = _mm_loadl_epi64((const __m128i *)(row + (k >> 1)));
    const __m128i low4 = _mm_set1_epi8(0x0F);
    __m128i lo = _mm_and_si128(b, low4), hi = _mm_and_si128(_mm_srli_epi16(b, 4), low4);
    return _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm_unpacklo_epi8(lo, hi)), lut16);
}

/* Columns [k0, k0 + count) of row n, scaled, into buf: float32 (bf16 == 0) or bfloat16 pairs of vectors.
 * Walks the scale blocks without a division per vector; count % 32 == 0. */
static inline __attribute__((always_inline)) void decode_row(const weights_t *w, int code, int bf16, int64_t n,
                                                             int64_t k0, int64_t count, void *buf) {
    const uint8_t *row = w->weight + n * w->row_bytes;
    const int64_t ahead = NB * w->row_bytes; /* the same bytes of the next block of rows */
    const float *row_scales = w->scales + n * w->scale_row_stride;
    const __m512 lut16 = w->lut16;
    const int64_t block = w->block;
    int64_t index = k0 / block, next = (index + 1) * block;
    __m512 scale = _mm512_set1_ps(row_scales[index]);
    for (int64_t j = 0; j < count; j += 32) {
        _mm_prefetch((const char *)row + (code == CODE_E2M1 ? (k0 + j) >> 1 : k0 + j) + ahead, PREFETCH_HINT);
        __m512 v[2];
        for (int h = 0; h < 2; h++) {
            const int64_t k = k0 + j + 16 * h;
            if (k >= next) {
                index++;
                next += block;
                scale = _mm512_set1_ps(row_scales[index]);
            }
            v[h] = _mm512_mul_ps(decode16(code, row, k, lut16), scale);
        }
#ifdef MPQ_BF16
        if (bf16) {
            _mm512_store_si512((__m512i *)((uint16_t *)buf + j), (__m512i)_mm512_cvtne2ps_pbh(v[1], v[0]));
            continue;
        }
#endif
        _mm512_store_ps((float *)buf + j, v[0]);
        _mm512_store_ps((float *)buf + j + 16, v[1]);
    }
}

/* 32 codes from column k as bfloat16 bits, by table lookup (vpermt2w / vpermw), unscaled. */
static inline __attribute__((always_inline)) __m512i codes_bf16(int code, const uint8_t *row, int64_t k,
                                                               const __m512i *t) {
    if (code == CODE_E4M3) {
        __m512i idx = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(row + k)));
        __m512i lo = _mm512_permutex2var_epi16(t[0], idx, t[1]); /* bits 0..5 of idx */
        __m512i hi = _mm512_permutex2var_epi16(t[2], idx, t[3]);
        __m512i mag = _mm512_mask_blend_epi16(_mm512_test_epi16_mask(idx, _mm512_set1_epi16(0x40)), lo, hi);
        /* mag | ((idx << 8) & 0x8000): the sign bit */
        return _mm512_ternarylogic_epi32(mag, _mm512_slli_epi16(idx, 8), _mm512_set1_epi16((short)0x8000), 0xF8);
    }
    if (code == CODE_I8) {
#ifdef MPQ_BF16
        __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(row + k))));
        __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(row + k + 16))));
        return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
#else
        return _mm512_setzero_si512(); /* the table path runs only with MPQ_BF16 */
#endif
    }
    __m512i d = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(row + (k >> 1))));
    /* each 32-bit lane: low nibble in its low word, high nibble in its high word: (d | d << 12) & 0x000F000F */
    __m512i nibbles = _mm512_ternarylogic_epi32(d, _mm512_slli_epi32(d, 12), _mm512_set1_epi32(0x000F000F), 0xA8);
    return _mm512_permutexvar_epi16(nibbles, t[0]);
}

static inline __attribute__((always_inline)) void decode_row_table(const weights_t *w, int code, int pow2,
                                                                   int64_t n, int64_t k0, int64_t count,
                                                                   uint16_t *buf) {
    const uint8_t *row = w->weight + n * w->row_bytes;
    const int64_t ahead = NB * w->row_bytes; /* the same bytes of the next block of rows */
    const int16_t *exp7 = w->exp7 + n * w->scale_row_stride;
    const __m512i nonzero = _mm512_set1_epi16(0x7FFF);
    for (int64_t j = 0; j < count; j += 32) {
        _mm_prefetch((const char *)row + (code == CODE_E2M1 ? (k0 + j) >> 1 : k0 + j) + ahead, PREFETCH_HINT);
        __m512i v = codes_bf16(code, row, k0 + j, w->table);
        if (pow2) /* exponent + log2(scale) on every non-zero code: the exact product, as bf16 */
            v = _mm512_mask_add_epi16(v, _mm512_test_epi16_mask(v, nonzero), v,
                                      _mm512_set1_epi16(exp7[(k0 + j) >> 5]));
        _mm512_store_si512((__m512i *)(buf + j), v);
    }
}

static void decode_rows(const weights_t *w, int bf16, int64_t n0, int nb, int64_t k0, int64_t count, void *buf) {
    const size_t row_stride = (size_t)CHUNK * (bf16 ? 2 : 4);
    for (int r = 0; r < nb; r++) {
        char *dst = (char *)buf + r * row_stride;
        if (bf16 && w->scale_mode != SCALE_EACH) {
            const int pow2 = w->scale_mode == SCALE_POW2;
            if (w->code == CODE_E4M3) {
                if (pow2) decode_row_table(w, CODE_E4M3, 1, n0 + r, k0, count, (uint16_t *)dst);
                else decode_row_table(w, CODE_E4M3, 0, n0 + r, k0, count, (uint16_t *)dst);
            } else if (w->code == CODE_I8) {
                decode_row_table(w, CODE_I8, 0, n0 + r, k0, count, (uint16_t *)dst);
            } else {
                if (pow2) decode_row_table(w, CODE_E2M1, 1, n0 + r, k0, count, (uint16_t *)dst);
                else decode_row_table(w, CODE_E2M1, 0, n0 + r, k0, count, (uint16_t *)dst);
            }
            continue;
        }
        if (w->code == CODE_E4M3) {
            if (bf16) decode_row(w, CODE_E4M3, 1, n0 + r, k0, count, dst);
            else decode_row(w, CODE_E4M3, 0, n0 + r, k0, count, dst);
        } else if (w->code == CODE_I8) {
            if (bf16) decode_row(w, CODE_I8, 1, n0 + r, k0, count, dst);
            else decode_row(w, CODE_I8, 0, n0 + r, k0, count, dst);
        } else {
            if (bf16) decode_row(w, CODE_E2M1, 1, n0 + r, k0, count, dst);
            else decode_row(w, CODE_E2M1, 0, n0 + r, k0, count, dst);
        }
    }
}

/* acc[m][r] (in memory between chunks) += x[m, k0:k0+count] . buf[r][0:count], for tm x nb rows. */
static inline __attribute__((always_inline)) void dot_f32(const float *buf, const float *x, int64_t k_in,
                                                          int64_t k0, int64_t count, int tm, int nb,
                                                          __m512 *acc_mem) {
    __m512 acc[TM][NB];
    for (int m = 0; m < tm; m++)
        for (int r = 0; r < nb; r++) acc[m][r] = acc_mem[m * NB + r];
    for (int64_t j = 0; j < count; j += 16) {
        __m512 wv[NB];
        for (int r = 0; r < nb; r++) wv[r] = _mm512_load_ps(buf + r * CHUNK + j);
        for (int m = 0; m < tm; m++) {
            __m512 xv = _mm512_loadu_ps(x + m * k_in + k0 + j);
            for (int r = 0; r < nb; r++) acc[m][r] = _mm512_fmadd_ps(xv, wv[r], acc[m][r]);
        }
    }
    for (int m = 0; m < tm; m++)
        for (int r = 0; r < nb; r++) acc_mem[m * NB + r] = acc[m][r];
}

/* One constant-folded instance of DOT(tm, nb) per (tm, nb) a caller uses: nb is NB or 1, tm 1..TM. */
#define DISPATCH_TILE(DOT)                                                                                  \
    do {                                                                                                    \
        if (nb == NB) {                                                                                     \
            switch (tm) {                                                                                   \
                case 1: DOT(1, NB); return;                                                                 \
                case 2: DOT(2, NB); return;                                                                 \
                case 3: DOT(3, NB); return;                                                                 \
                default: DOT(4, NB); return;                                                                \
            }                                                                                               \
        }                                                                                                   \
        switch (tm) {                                                                                       \
            case 1: DOT(1, 1); return;                                                                      \
            case 2: DOT(2, 1); return;                                                                      \
            case 3: DOT(3, 1); return;                                                                      \
            default: DOT(4, 1); return;                                                                     \
        }                                                                                                   \
    } while (0)

static void tile_f32(const float *buf, const float *x, int64_t k_in, int64_t k0, int64_t count, int tm, int nb,
                     __m512 *acc_mem) {
#define DOT_F32(TMC, NBC) dot_f32(buf, x, k_in, k0, count, TMC, NBC, acc_mem)
    DISPATCH_TILE(DOT_F32);
#undef DOT_F32
}

#ifdef MPQ_BF16
static inline __attribute__((always_inline)) void dot_bf16(const uint16_t *buf, const uint16_t *x, int64_t k_in,
                                                           int64_t k0, int64_t count, int tm, int nb,
                                                           __m512 *acc_mem) {
    __m512 acc[TM][NB];
    for (int m = 0; m < tm; m++)
        for (int r = 0; r < nb; r++) acc[m][r] = acc_mem[m * NB + r];
    for (int64_t j = 0; j < count; j += 32) {
        __m512bh wv[NB];
        for (int r = 0; r < nb; r++) wv[r] = (__m512bh)_mm512_load_si512((const __m512i *)(buf + r * CHUNK + j));
        for (int m = 0; m < tm; m++) {
            __m512bh xv = (__m512bh)_mm512_loadu_si512((const __m512i *)(x + m * k_in + k0 + j));
            for (int r = 0; r < nb; r++) acc[m][r] = _mm512_dpbf16_ps(acc[m][r], xv, wv[r]);
        }
    }
    for (int m = 0; m < tm; m++)
        for (int r = 0; r < nb; r++) acc_mem[m * NB + r] = acc[m][r];
}

static void tile_bf16(const uint16_t *buf, const uint16_t *x, int64_t k_in, int64_t k0, int64_t count, int tm,
                      int nb, __m512 *acc_mem) {
#define DOT_BF16(TMC, NBC) dot_bf16(buf, x, k_in, k0, count, TMC, NBC, acc_mem)
    DISPATCH_TILE(DOT_BF16);
#undef DOT_BF16
}
#endif

static inline float bf16_to_float(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline uint16_t bf16_bits(float f) { /* round to nearest even, as vcvtne2ps2bf16 (NaN stays NaN) */
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((bits >> 16) | 0x40);
    return (uint16_t)((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
}

static inline float round_to_bf16(float f) { return bf16_to_float(bf16_bits(f)); }

int mpq_fused_has_bf16(void) {
#ifdef MPQ_BF16
    return __builtin_cpu_supports("avx512bf16");
#else
    return 0;
#endif
}

/* Rows [n0, n0 + nb) of y for rows [m0, m0 + ms) of x. */
static void row_block(const weights_t *w, const void *x, int x_bf16, void *y, int y_bf16, int64_t m0, int64_t ms,
                      int64_t n0, int nb, int64_t n_out, int64_t k_in, void *buf) {
    const int64_t k_vec = k_in / 32 * 32;
    __m512 acc_mem[MS * NB];
    for (int64_t i = 0; i < ms * NB; i++) acc_mem[i] = _mm512_setzero_ps();
    for (int64_t k0 = 0; k0 < k_vec; k0 += CHUNK) {
        const int64_t count = k_vec - k0 < CHUNK ? k_vec - k0 : CHUNK;
        decode_rows(w, x_bf16, n0, nb, k0, count, buf);
        for (int64_t m = 0; m < ms; m += TM) {
            const int tm = ms - m < TM ? (int)(ms - m) : TM;
#ifdef MPQ_BF16
            if (x_bf16) {
                tile_bf16((const uint16_t *)buf, (const uint16_t *)x + (m0 + m) * k_in, k_in, k0, count, tm, nb,
                          acc_mem + m * NB);
                continue;
            }
#endif
            tile_f32((const float *)buf, (const float *)x + (m0 + m) * k_in, k_in, k0, count, tm, nb,
                     acc_mem + m * NB);
        }
    }
    const int row_scale = x_bf16 && w->scale_mode == SCALE_ROW; /* the sum is of unscaled codes */
    for (int64_t m = 0; m < ms; m++) {
        for (int r = 0; r < nb; r++) {
            const int64_t n = n0 + r;
            float s = _mm512_reduce_add_ps(acc_mem[m * NB + r]);
            for (int64_t k = k_vec; k < k_in; k++) {
                if (row_scale) {
                    s += bf16_to_float(((const uint16_t *)x)[(m0 + m) * k_in + k]) * scalar_code(w, n, k);
                    continue;
                }
                const float wk = scalar_weight(w, n, k);
                s += x_bf16 ? bf16_to_float(((const uint16_t *)x)[(m0 + m) * k_in + k]) * round_to_bf16(wk)
                            : ((const float *)x)[(m0 + m) * k_in + k] * wk;
            }
            if (row_scale) s *= w->scales[n * w->scale_row_stride];
            if (y_bf16) ((uint16_t *)y)[(m0 + m) * n_out + n] = bf16_bits(s);
            else ((float *)y)[(m0 + m) * n_out + n] = s;
        }
    }
}

void mpq_fused_gemv(int code, const uint8_t *weight, int64_t row_bytes, const float *scales,
                    int64_t scale_row_stride, int64_t block, const float *lut, int scale_mode,
                    const int16_t *exp7, const uint16_t *bf16_table, const void *x, int x_bf16, void *y, int y_bf16,
                    int64_t m_rows, int64_t n_out, int64_t k_in, int threads) {
    weights_t w = {code, weight, row_bytes, scales, scale_row_stride, block, lut,
                   code == CODE_E2M1 ? _mm512_loadu_ps(lut) : _mm512_setzero_ps(), scale_mode, exp7};
    for (int i = 0; i < (code == CODE_E4M3 ? 4 : code == CODE_E2M1 ? 1 : 0); i++) w.table[i] = _mm512_loadu_si512(bf16_table + 32 * i);
    const int64_t blocks = (n_out + NB - 1) / NB;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t b = 0; b < blocks; b++) {
        float buf[NB * CHUNK] __attribute__((aligned(64)));
        const int64_t n0 = b * NB;
        const int nb = n_out - n0 < NB ? (int)(n_out - n0) : NB;
        for (int64_t m0 = 0; m0 < m_rows; m0 += MS) {
            const int64_t ms = m_rows - m0 < MS ? m_rows - m0 : MS;
            if (nb == NB)
                row_block(&w, x, x_bf16, y, y_bf16, m0, ms, n0, NB, n_out, k_in, buf);
            else /* the last rows when NB does not divide n_out: one at a time */
                for (int r = 0; r < nb; r++) row_block(&w, x, x_bf16, y, y_bf16, m0, ms, n0 + r, 1, n_out, k_in, buf);
        }
    }
}
