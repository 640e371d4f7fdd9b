/* Native loops for the coordinator's float32 fold (loaded by coordinator/aggregation/native.py).
 *
 * Each loop reads its buffers once: an update's block is added to the running sum and its sum
 * of squares taken in the same pass (ATen needs two: `add_`, then a norm). The additions are
 * ATen's own, bit for bit: fmaf(alpha, value, sum), as its vectorised `add_` computes them;
 * native.py checks that on the machine before it uses this file. Every block is measured by
 * the same code in the same order (64 lanes, each summing every 64th square, then the lanes
 * summed in order), whichever loop measures it and however many threads run: a block's norm
 * does not depend on how it was reached. Built without floating-point contraction, so that
 * every clone (AVX-512, AVX2, plain x86-64) gives the same bits.
 */
#include <math.h>
#include <stdint.h>

#define LANES 64

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

enum { MEASURE = 0, ADD = 1, WRITE = 2 };

/* The block's norm; with ADD, sum[i] += alpha * values[i] (one rounding); with WRITE,
 * sum[i] = alpha * values[i]. */
static inline __attribute__((always_inline)) float block(
    float *restrict sum, const float *restrict values, float alpha, int64_t count, int mode) {
    float lanes[LANES] = {0};
    int64_t whole = count - count % LANES;
    for (int64_t i = 0; i < whole; i += LANES) {
#pragma omp simd
        for (int j = 0; j < LANES; j++) {
            float v = values[i + j];
            if (mode == ADD) sum[i + j] = fmaf(alpha, v, sum[i + j]);
            if (mode == WRITE) sum[i + j] = alpha * v;
            lanes[j] += v * v;
        }
    }
    for (int64_t i = whole; i < count; i++) {
        float v = values[i];
        if (mode == ADD) sum[i] = fmaf(alpha, v, sum[i]);
        if (mode == WRITE) sum[i] = alpha * v;
        lanes[i - whole] += v * v;
    }
    float squares = 0.0f;
    for (int j = 0; j < LANES; j++) squares += lanes[j];
    return sqrtf(squares);
}

/* norms[b] = the L2 norm of values[b * size : (b + 1) * size], for b < blocks. */
CLONES void block_norms(const float *restrict values, int64_t blocks, int64_t size,
                        float *restrict norms, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t b = 0; b < blocks; b++)
        norms[b] = block(0, values + b * size, 0.0f, size, MEASURE);
}

/* sum += alpha * values (or sum = alpha * values if `write`), with block_norms of values. */
CLONES void add_measured(float *restrict sum, const float *restrict values, float alpha,
                         int write, int64_t blocks, int64_t size, float *restrict norms,
                         int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t b = 0; b < blocks; b++)
        norms[b] = write ? block(sum + b * size, values + b * size, alpha, size, WRITE)
                         : block(sum + b * size, values + b * size, alpha, size, ADD);
}

/* weights += alpha * delta, returning the sum of the new weights (non-finite if any is). */
CLONES double add_summed(float *restrict weights, const float *restrict delta, float alpha,
                         int64_t count, int threads) {
    double total = 0.0;
#pragma omp parallel for schedule(static) num_threads(threads) reduction(+ : total)
    for (int64_t start = 0; start < count; start += 1 << 14) {
        int64_t stop = start + (1 << 14) < count ? start + (1 << 14) : count;
        double part = 0.0;
#pragma omp simd reduction(+ : part)
        for (int64_t i = start; i < stop; i++) {
            float x = fmaf(alpha, delta[i], weights[i]);
            weights[i] = x;
            part += x;
        }
        total += part;
    }
    return total;
}
