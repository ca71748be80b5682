/* Fused dequantize-GEMV for fp8 (E4M3) and mxfp4 (E2M1) weights on AVX-512 CPUs.
 *
 * y[m, n] = sum_k x[m, k] * w[n, k] with w[n, k] = value(code[n, k]) * scale[n, k / block], for a few
 * rows of x (decode).  Each thread takes a range of output rows n; a row is decoded CHUNK columns at a
 * time into a float32 buffer that stays in L1 (the exact float32 weight the format's reference builds:
 * one product of two exact factors, rounded once) and dotted with every row of x, so the weight bytes
 * are read from memory once per call and no dequantized copy of the weight is ever written.
 *
 * Codes:
 *   E4M3 (fp8, mxfp8): byte `s eeee mmm` shifted into float16 bits `s 0eeee mmm0000000` is the value
 *     times 2^-8, subnormals included; the caller's scales carry the 2^8.  `lut` holds the same
 *     value * 2^-8 per byte for the scalar tail.
 *   E2M1 (mxfp4): two codes per byte, low nibble first; `lut` holds the 16 values.
 * Scales: float32, row n's at scales + n * scale_row_stride (stride 0: one row for every n), one per
 * `block` columns.  The vector path needs block % 16 == 0 (the caller checks); columns past the last
 * multiple of 16 go through the scalar tail.
 * Threads: OpenMP, linked against the libgomp torch already loaded, so torch's pool is reused.
 */
#include <immintrin.h>
#include <stdint.h>

#define CHUNK 512

enum { CODE_E4M3 = 0, CODE_E2M1 = 1 };

static inline float scalar_value(int code, const uint8_t *row, int64_t k, const float *lut) {
    if (code == CODE_E4M3) return lut[row[k]];
    uint8_t b = row[k >> 1];
    return lut[(k & 1) ? (b >> 4) : (b & 0x0F)];
}

/* Decode columns [k0, k0 + count) of one weight row into buf (count % 16 == 0, k0 % 16 == 0). */
static inline void decode16(int code, const uint8_t *row, int64_t k0, int64_t count, const float *scales,
                            int64_t block, __m512 lut16, float *buf) {
    const __m256i fp16_mask = _mm256_set1_epi16((short)0xBF80);
    const __m128i low4 = _mm_set1_epi8(0x0F);
    for (int64_t j = 0; j < count; j += 16) {
        int64_t k = k0 + j;
        __m512 v;
        if (code == CODE_E4M3) {
            __m256i h = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(row + k)));
            v = _mm512_cvtph_ps(_mm256_and_si256(_mm256_slli_epi16(h, 7), fp16_mask));
        } else {
            __m128i b = _mm_loadl_epi64((const __m128i *)(row + (k >> 1)));
            __m128i lo = _mm_and_si128(b, low4);
            __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), low4);
            v = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm_unpacklo_epi8(lo, hi)), lut16);
        }
        _mm512_storeu_ps(buf + j, _mm512_mul_ps(v, _mm512_set1_ps(scales[k / block])));
    }
}

void mpq_fused_gemv(int code, const uint8_t *weight, int64_t row_bytes, const float *scales,
                    int64_t scale_row_stride, int64_t block, const float *lut, const float *x, float *y,
                    int64_t m_rows, int64_t n_out, int64_t k_in, int threads) {
    const int64_t k_vec = k_in / 16 * 16;
    const __m512 lut16 = code == CODE_E2M1 ? _mm512_loadu_ps(lut) : _mm512_setzero_ps();
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t n = 0; n < n_out; n++) {
        float buf[CHUNK] __attribute__((aligned(64)));
        __m512 acc[16];
        const uint8_t *row = weight + n * row_bytes;
        const float *row_scales = scales + n * scale_row_stride;
        for (int64_t m0 = 0; m0 < m_rows; m0 += 16) {  /* rows of x in tiles of 16 accumulators */
            const int64_t mt = m_rows - m0 < 16 ? m_rows - m0 : 16;
            for (int64_t m = 0; m < mt; m++) acc[m] = _mm512_setzero_ps();
            for (int64_t k0 = 0; k0 < k_vec; k0 += CHUNK) {
                const int64_t count = k_vec - k0 < CHUNK ? k_vec - k0 : CHUNK;
                decode16(code, row, k0, count, row_scales, block, lut16, buf);
                for (int64_t m = 0; m < mt; m++) {
                    const float *xr = x + (m0 + m) * k_in + k0;
                    __m512 a = acc[m];
                    for (int64_t j = 0; j < count; j += 16)
                        a = _mm512_fmadd_ps(_mm512_loadu_ps(xr + j), _mm512_load_ps(buf + j), a);
                    acc[m] = a;
                }
            }
            for (int64_t m = 0; m < mt; m++) {
                float s = _mm512_reduce_add_ps(acc[m]);
                const float *xr = x + (m0 + m) * k_in;
                for (int64_t k = k_vec; k < k_in; k++)
                    s += xr[k] * (scalar_value(code, row, k, lut) * row_scales[k / block]);
                y[(m0 + m) * n_out + n] = s;
            }
        }
    }
}
