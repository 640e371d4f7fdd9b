/* Native loops for the coordinator's fold (loaded by coordinator/aggregation/native.py).
 *
 * Each loop reads its buffers once: an update's block is added to the running sum and its sum
 * of squares taken in the same pass (ATen needs two: `add_`, then a norm); spooled updates are
 * read from their files into a small buffer of each thread's and added from there, with no
 * mapping of the files (whose pages cost a fault each, and an unmapping). float32 values are
 * added as ATen's vectorised `add_` adds them, bit for bit: fmaf(alpha, value, sum); bfloat16
 * ones are widened and added as the coordinator's compiled widening kernels add them, product
 * then sum; native.py and kernels.py check both on the machine before they use this file.
 * Every block is measured by the same code in the same order (64 lanes, each summing every
 * 64th square, then the lanes summed in order), whichever loop measures it and however many
 * threads run: a block's norm does not depend on how it was reached. Built without
 * floating-point contraction, so that every clone (AVX-512, AVX2, plain x86-64) gives the same
 * bits.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LANES 64

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

enum { MEASURE = 0, ADD = 1, WRITE = 2 };

/* bfloat16 to float32: the same value (its bits are a float32's upper half). */
static inline float widen(uint16_t half) {
    uint32_t bits = (uint32_t)half << 16;
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

/* The value at index i of float32 `values`, or of bfloat16 ones (`widened`), as a float32. */
static inline __attribute__((always_inline)) float value_at(const void *restrict values,
                                                             int64_t i, int widened) {
    return widened ? widen(((const uint16_t *)values)[i]) : ((const float *)values)[i];
}

/* sum + alpha * v as the fold adds an update of its kind: a float32 one with one rounding, as
 * ATen's add_; a widened bfloat16 one with two, product then sum, as the compiled widening
 * kernels (coordinator/aggregation/kernels.py) add it. */
static inline __attribute__((always_inline)) float added(float sum, float v, float alpha,
                                                          int widened) {
    return widened ? sum + v * alpha : fmaf(alpha, v, sum);
}

/* A block's norm from its lanes: summed in order. */
static inline float lanes_norm(const float *lanes) {
    float squares = 0.0f;
    for (int j = 0; j < LANES; j++) squares += lanes[j];
    return sqrtf(squares);
}

/* Values the payload check takes at a time where a loop checks what it reads (16 KiB of
 * float32 ones): the check brings them into the core's first-level cache, and they are added
 * and squared there. A multiple of LANES. */
#define CHECKED 4096

uint32_t crc32_update(uint32_t crc, const void *data, int64_t n); /* crc32.c */
uint32_t crc32_shift(int64_t n);
uint32_t crc32_combine(uint32_t before, uint32_t after, uint32_t shift);

static int64_t nanoseconds(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
}

/* The block's norm; with ADD, sum[i] = added(sum[i], values[i]); with WRITE, sum[i] = alpha *
 * values[i]. With a `crc` (the register before and after, as zlib's crc32 carries it), the
 * block's bytes pass through the CRC-32 first, CHECKED values at a time, each piece then added
 * and squared while in the core's first cache (*spent: plus the nanoseconds the CRC took).
 * Every value goes to the same lane in the same order either way: the same bits. */
static inline __attribute__((always_inline)) float block(
    float *restrict sum, const void *restrict values, float alpha, int64_t count, int mode,
    int widened, uint32_t *restrict crc, int64_t *restrict spent) {
    size_t itemsize = widened ? sizeof(uint16_t) : sizeof(float);
    float lanes[LANES] = {0};
    int64_t whole = count - count % LANES, piece = crc ? CHECKED : count;
    for (int64_t from = 0; from < count; from += piece) {
        int64_t to = count - from < piece ? count : from + piece;
        if (crc) {
            int64_t started = nanoseconds();
            *crc = crc32_update(*crc, (const char *)values + from * itemsize,
                                (to - from) * (int64_t)itemsize);
            *spent += nanoseconds() - started;
        }
        for (int64_t i = from; i < (to < whole ? to : whole); i += LANES) {
#pragma omp simd
            for (int j = 0; j < LANES; j++) {
                float v = value_at(values, i + j, widened);
                if (mode == ADD) sum[i + j] = added(sum[i + j], v, alpha, widened);
                if (mode == WRITE) sum[i + j] = alpha * v;
                lanes[j] += v * v;
            }
        }
        for (int64_t i = whole > from ? whole : from; i < to; i++) {
            float v = value_at(values, i, widened);
            if (mode == ADD) sum[i] = added(sum[i], v, alpha, widened);
            if (mode == WRITE) sum[i] = alpha * v;
            lanes[i - whole] += v * v;
        }
    }
    return lanes_norm(lanes);
}

/* block() adding (or, with `write`, writing) `values` into `sum`, checking them first if `crc`,
 * its eight kinds each compiled with its own constants. */
static inline __attribute__((always_inline)) float add_block(
    float *restrict sum, const void *restrict values, float alpha, int64_t count, int write,
    int widened, uint32_t *restrict crc, int64_t *restrict spent) {
    if (crc) {
        if (widened)
            return write ? block(sum, values, alpha, count, WRITE, 1, crc, spent)
                         : block(sum, values, alpha, count, ADD, 1, crc, spent);
        return write ? block(sum, values, alpha, count, WRITE, 0, crc, spent)
                     : block(sum, values, alpha, count, ADD, 0, crc, spent);
    }
    if (widened)
        return write ? block(sum, values, alpha, count, WRITE, 1, 0, 0)
                     : block(sum, values, alpha, count, ADD, 1, 0, 0);
    return write ? block(sum, values, alpha, count, WRITE, 0, 0, 0)
                 : block(sum, values, alpha, count, ADD, 0, 0, 0);
}

/* The next block for the calling thread to take, or -1 when all `blocks` are taken: the thread
 * that called the loop (the team's first) takes them from the last one down, the others from
 * the first one up, until they meet. */
static inline int64_t next_block(int64_t *claimed, int64_t *front, int64_t *back,
                                 int64_t blocks) {
    int64_t count, taken;
#pragma omp atomic capture
    count = (*claimed)++;
    if (count >= blocks) return -1;
    if (omp_get_thread_num() == 0) {
#pragma omp atomic capture
        taken = (*back)++;
        return blocks - 1 - taken;
    }
#pragma omp atomic capture
    taken = (*front)++;
    return taken;
}

/* norms[b] = the L2 norm of values[b * size : (b + 1) * size], for b < blocks: float32 values,
 * or bfloat16 ones if `widened`. The blocks are taken as add_measured takes them: the calling
 * thread's from the last one down, the last it checked and so in its core's own cache (on one
 * thread, over 150M values in fresh 4 MiB chunks, ad hoc: 6.8 against 8.9 ms from the first
 * one up in this machine's faster memory phase, 6.8 against 7.5 in the slower). */
CLONES void block_norms(const void *restrict values, int64_t blocks, int64_t size,
                        float *restrict norms, int threads, int widened) {
    size_t itemsize = widened ? sizeof(uint16_t) : sizeof(float);
    int64_t claimed = 0, front = 0, back = 0;
#pragma omp parallel num_threads(threads)
    for (int64_t b; (b = next_block(&claimed, &front, &back, blocks)) >= 0;) {
        const char *at = (const char *)values + b * size * itemsize;
        norms[b] = widened ? block(0, at, 0.0f, size, MEASURE, 1, 0, 0)
                           : block(0, at, 0.0f, size, MEASURE, 0, 0, 0);
    }
}

/* block_norms, on the calling thread, of values the payload check has not seen yet: each
 * CHECKED values are carried through the CRC-32 (*crc, the register before and after, as
 * zlib's crc32 carries it) and then squared into their block's lanes while in the core's first
 * cache, so that a received chunk is fetched from memory once, not once to check and again to
 * measure. The lanes take every value in the same order as block's, so the norms are
 * block_norms' bit for bit. *checking: the nanoseconds spent in the CRC (the check's share of
 * the pass; the rest is the measuring). */
CLONES void check_norms(const void *restrict values, int64_t blocks, int64_t size,
                        float *restrict norms, int widened, uint32_t *restrict crc,
                        int64_t *restrict checking) {
    size_t itemsize = widened ? sizeof(uint16_t) : sizeof(float);
    uint32_t register_ = *crc;
    int64_t spent = 0;
    for (int64_t b = 0; b < blocks; b++) {
        const char *at = (const char *)values + b * size * itemsize;
        norms[b] = widened ? block(0, at, 0.0f, size, MEASURE, 1, &register_, &spent)
                           : block(0, at, 0.0f, size, MEASURE, 0, &register_, &spent);
    }
    *crc = register_;
    *checking = spent;
}

/* Values each thread reads from a file at a time into its buffer (256 KiB): whole stretches of
 * the sum, the files one after another, each stretch in the core's cache until they are added.
 * The stretches are taken as add_measured takes its blocks (the calling thread's from the last
 * one down). Updates carried along by a live fold are read by add_measured instead, a
 * block at a time, into the block of the sum it has just added. */
#define TILE 65536

/* Read `count` bytes at `offset` of `fd` into `into`: 0, or an errno (ENODATA: the file ends). */
static int read_fully(int fd, char *into, size_t count, int64_t offset) {
    while (count > 0) {
        ssize_t got = pread(fd, into, count, offset);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) return errno ? errno : EIO;
        if (got == 0) return ENODATA;
        into += got, count -= (size_t)got, offset += got;
    }
    return 0;
}

/* s += a * values (s = a * values if `write`), values the `n` values at byte `offset` of `fd`,
 * read into `buffer`: float32 ones (`widened` 0) added with one rounding, as ATen's add_ (and
 * written as its mul); bfloat16 ones (`widened` 1) widened and added with two, product then
 * sum, as the coordinator's compiled widening kernels do (native.py checks both). Returns 0
 * or an errno, as read_fully. */
static inline __attribute__((always_inline)) int add_file(float *restrict s, float *buffer,
                                                          int fd, int64_t offset, int64_t n,
                                                          float a, int write, int widened) {
    size_t itemsize = widened ? sizeof(uint16_t) : sizeof(float);
    int status = buffer ? read_fully(fd, (char *)buffer, (size_t)n * itemsize, offset) : ENOMEM;
    if (status) return status;
    const float *restrict v = buffer;
    const uint16_t *restrict h = (const uint16_t *)buffer;
    if (write) {
        if (widened) {
#pragma omp simd
            for (int64_t i = 0; i < n; i++) s[i] = widen(h[i]) * a;
        } else {
#pragma omp simd
            for (int64_t i = 0; i < n; i++) s[i] = a * v[i];
        }
    } else if (widened) {
#pragma omp simd
        for (int64_t i = 0; i < n; i++) s[i] = s[i] + widen(h[i]) * a;
    } else {
#pragma omp simd
        for (int64_t i = 0; i < n; i++) s[i] = fmaf(a, v[i], s[i]);
    }
    return 0;
}

/* A file that could not be read: the first one recorded (its index + 1 and errno), and every
 * thread told to stop. */
static void failed_read(int *failed, int *index, int *code, int j, int status) {
#pragma omp critical(add_read_failed)
    if (!*index) *index = j + 1, *code = status;
#pragma omp atomic write
    *failed = 1;
}

/* sum += alphas[j] * values_j for each file j in turn, values_j the `count` values at byte
 * `offset` of file fds[j] (as add_file adds them); with `write`, the first is written instead
 * (sum = alphas[0] * values_0). Returns 0, or j + 1 for a file that could not be read in full
 * (*error: its errno, ENODATA if it ends early); the sum then holds part of the additions. */
CLONES int add_read(float *restrict sum, const int *restrict fds, int64_t offset,
                    const float *restrict alphas, int k, int write, int widened, int64_t count,
                    int threads, int *restrict error) {
    int failed = 0, index = 0, code = 0;
    int64_t itemsize = widened ? sizeof(uint16_t) : sizeof(float);
    int64_t tiles = (count + TILE - 1) / TILE, claimed = 0, front = 0, back = 0;
#pragma omp parallel num_threads(threads)
    {
        float *buffer = aligned_alloc(64, TILE * sizeof(float));
        for (int64_t tile; (tile = next_block(&claimed, &front, &back, tiles)) >= 0;) {
            int stop;
#pragma omp atomic read
            stop = failed;
            if (stop) continue;
            int64_t start = tile * TILE, n = count - start < TILE ? count - start : TILE;
            for (int j = 0; j < k; j++) {
                int status = add_file(sum + start, buffer, fds[j], offset + start * itemsize, n,
                                      alphas[j], j == 0 && write, widened);
                if (status) {
                    failed_read(&failed, &index, &code, j, status);
                    break;
                }
            }
        }
        free(buffer);
    }
    *error = code;
    return index;
}

/* sum = added(sum, values) (or sum = alpha * values if `write`), with block_norms of values:
 * float32 values, or bfloat16 ones if `widened`. The values are a chunk the calling thread has
 * just received, the last of it in its core's cache, and another core fetches them from there
 * slower than from memory where the cores are far apart: so the blocks are not shared out in
 * halves but taken as each thread is ready, the caller's from the last one down and the others'
 * from the first one up, and the caller's thread adds more of them when the others are slower
 * (measured over 150M values in 4 MiB chunks, ad hoc: 17.2 against 20.5 ms for halves in this
 * machine's faster memory phase, where a core-to-core round trip takes 420-590 ns; 17.0 against
 * 16.8 in the slower, at 120-310 ns; 17.6 and 17.3 taking both from the first block up). Which
 * thread adds a block changes no bit of it. With a `crc` (the register before and after, as
 * zlib's crc32 carries it), the chunk is checked in the same pass: each block's CRC-32 from 0 as
 * block() takes it, then the blocks' carried on in order (crc32_combine), so the chunk is
 * fetched from memory once and checked on every thread (*checking: the nanoseconds the CRC took,
 * summed over the threads and divided by their number). Then, into each block as soon as it is
 * added, while it is in the core's cache, the values of k files (none for a chunk alone), as
 * add_read adds them (never written): the updates a live fold carries, added along with the
 * chunk it has just received, each value with the same operations in the same order as the two
 * loops one after the other. Returns 0, or j + 1 for a file that could not be read in full
 * (*error: its errno), as add_read; -1 (*error ENOMEM) with nothing done if there is no memory
 * for the blocks' registers. */
CLONES int add_measured(float *restrict sum, const void *restrict values, float alpha,
                        int write, int64_t blocks, int64_t size, float *restrict norms,
                        int threads, int widened, const int *restrict fds, int64_t offset,
                        const float *restrict alphas, int k, int *restrict error,
                        uint32_t *restrict crc, int64_t *restrict checking) {
    int failed = 0, index = 0, code = 0, team = 1;
    int64_t itemsize = widened ? sizeof(uint16_t) : sizeof(float);
    int64_t claimed = 0, front = 0, back = 0, spent = 0;
    uint32_t *parts = crc ? calloc((size_t)blocks + 1, sizeof *parts) : NULL;
    if (crc && !parts) return -ENOMEM;
#pragma omp parallel num_threads(threads) reduction(+ : spent)
    {
        float *buffer = k ? aligned_alloc(64, size * sizeof(float)) : NULL;
        if (omp_get_thread_num() == 0) team = omp_get_num_threads();
        for (int64_t b; (b = next_block(&claimed, &front, &back, blocks)) >= 0;) {
            float *s = sum + b * size;
            const char *at = (const char *)values + b * size * itemsize;
            norms[b] = add_block(s, at, alpha, size, write, widened, parts ? parts + b : NULL,
                                 &spent);
            int stop;
#pragma omp atomic read
            stop = failed;
            if (stop) continue;
            for (int j = 0; j < k; j++) {
                int status = add_file(s, buffer, fds[j], offset + b * size * itemsize, size,
                                      alphas[j], 0, widened);
                if (status) {
                    failed_read(&failed, &index, &code, j, status);
                    break;
                }
            }
        }
        free(buffer);
    }
    if (parts) { /* each block's CRC-32 taken from 0: carried on from the register before */
        uint32_t shift = crc32_shift(size * itemsize), register_ = *crc;
        for (int64_t b = 0; b < blocks; b++) register_ = crc32_combine(register_, parts[b], shift);
        *crc = register_;
        *checking = spent / team;
        free(parts);
    }
    if (error) *error = code;
    return index;
}

/* weights += alpha * delta, returning the sum of the new weights (non-finite if any is);
 * *squares = the sum of the squares of delta (each square exact in double). */
CLONES double add_summed(float *restrict weights, const float *restrict delta, float alpha,
                         int64_t count, int threads, double *restrict squares) {
    double total = 0.0, squared = 0.0;
#pragma omp parallel for schedule(static) num_threads(threads) reduction(+ : total, squared)
    for (int64_t start = 0; start < count; start += 1 << 14) {
        int64_t stop = start + (1 << 14) < count ? start + (1 << 14) : count;
        double part = 0.0, square = 0.0;
#pragma omp simd reduction(+ : part, square)
        for (int64_t i = start; i < stop; i++) {
            float d = delta[i];
            float x = fmaf(alpha, d, weights[i]);
            weights[i] = x;
            part += x;
            square += (double)d * (double)d;
        }
        total += part;
        squared += square;
    }
    *squares = squared;
    return total;
}
