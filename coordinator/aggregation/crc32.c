/* CRC-32 of received and sent payloads, the one zlib's crc32() computes (reflected polynomial
 * 0xEDB88320, register inverted before and after), by folding with carry-less multiplication
 * (PCLMULQDQ) on x86-64: the payload check runs at memory speed rather than zlib's table
 * speed (docs/benchmarks.md). Built into the same library as native.c; native.py uses it only
 * where crc32_folds() says the processor folds and the check against zlib passed.
 *
 * Folding: the message is a polynomial over GF(2); four 128-bit accumulators each take every
 * fourth 16 bytes, and an accumulator x moves 512 bits on by x.lo * K1 ^ x.hi * K2 (then the
 * next 16 bytes are added), K1 = x^(4*128+32) mod P and K2 = x^(4*128-32) mod P, bit-reflected
 * and shifted left by one as the reflected multiplication needs. The four are folded into one
 * with K3 = x^(128+32), K4 = x^(128-32) (mod P, likewise), the 128 bits reduced to 64 with K4,
 * to 32 with K5 = x^64 mod P, and the remainder taken by Barrett reduction with MU = x^64 div P
 * and P itself, both reflected (33 bits). Bytes past the last whole 16, and messages shorter
 * than 64 bytes, are taken bit by bit.
 */
#include <stddef.h>
#include <stdint.h>

#define POLYNOMIAL 0xEDB88320u

/* The register after `n` more bytes, a bit at a time (tails only: at most 63 bytes). */
static uint32_t bitwise(uint32_t crc, const unsigned char *p, size_t n) {
    while (n--) {
        crc ^= *p++;
        for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (POLYNOMIAL & (0u - (crc & 1u)));
    }
    return crc;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#define K1 0x154442bd4LL
#define K2 0x1c6e41596LL
#define K3 0x1751997d0LL
#define K4 0x0ccaa009eLL
#define K5 0x163cd6124LL
#define MU 0x1f7011641LL
#define P 0x1db710641LL

/* x moved 128 bits times the fold's distance on (k: the distance's two constants), plus d. */
#define FOLD(x, k, d)                                                                           \
    _mm_xor_si128(                                                                              \
        _mm_xor_si128(_mm_clmulepi64_si128(x, k, 0x00), _mm_clmulepi64_si128(x, k, 0x11)), d)
#define LOAD(p) _mm_loadu_si128((const __m128i *)(p))

/* The register after `n` more bytes, n >= 64 and a multiple of 16. */
__attribute__((target("pclmul,sse4.1"))) static uint32_t folded(uint32_t crc,
                                                                 const unsigned char *p,
                                                                 size_t n) {
    const __m128i k12 = _mm_set_epi64x(K2, K1), k34 = _mm_set_epi64x(K4, K3);
    const __m128i k5 = _mm_set_epi64x(0, K5), barrett = _mm_set_epi64x(MU, P);
    const __m128i low32 = _mm_set_epi32(0, 0, 0, -1);
    __m128i x0 = _mm_xor_si128(LOAD(p), _mm_cvtsi32_si128((int)crc));
    __m128i x1 = LOAD(p + 16), x2 = LOAD(p + 32), x3 = LOAD(p + 48);
    for (p += 64, n -= 64; n >= 64; p += 64, n -= 64) {
        x0 = FOLD(x0, k12, LOAD(p));
        x1 = FOLD(x1, k12, LOAD(p + 16));
        x2 = FOLD(x2, k12, LOAD(p + 32));
        x3 = FOLD(x3, k12, LOAD(p + 48));
    }
    x0 = FOLD(FOLD(FOLD(x0, k34, x1), k34, x2), k34, x3);
    for (; n >= 16; p += 16, n -= 16) x0 = FOLD(x0, k34, LOAD(p));
    x0 = _mm_xor_si128(_mm_clmulepi64_si128(k34, x0, 0x01), _mm_srli_si128(x0, 8));
    x0 = _mm_xor_si128(_mm_clmulepi64_si128(_mm_and_si128(x0, low32), k5, 0x00),
                       _mm_srli_si128(x0, 4));
    __m128i t = _mm_clmulepi64_si128(_mm_and_si128(x0, low32), barrett, 0x10);
    t = _mm_clmulepi64_si128(_mm_and_si128(t, low32), barrett, 0x00);
    return (uint32_t)_mm_extract_epi32(_mm_xor_si128(x0, t), 1);
}

int crc32_folds(void) {
    return __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
}
#define FOLDS 1
#else
int crc32_folds(void) { return 0; }
#endif

/* zlib's crc32(crc, data, n): the CRC-32 of the bytes before, `crc`, carried over `n` more.
 * Folds only where crc32_folds(); bit by bit elsewhere (callers use zlib there). */
uint32_t crc32_update(uint32_t crc, const void *data, int64_t n) {
    const unsigned char *p = data;
    size_t count = n > 0 ? (size_t)n : 0;
    crc = ~crc;
#ifdef FOLDS
    if (count >= 64 && crc32_folds()) {
        size_t whole = count & ~(size_t)15;
        crc = folded(crc, p, whole);
        p += whole, count -= whole;
    }
#endif
    return ~bitwise(crc, p, count);
}

/* a * b modulo P, both bit-reflected as the register is (bit 31 the x^0 term). */
static uint32_t multiply(uint32_t a, uint32_t b) {
    uint32_t product = 0;
    for (uint32_t term = 1u << 31; term; term >>= 1) {
        if (a & term) product ^= b;
        b = (b >> 1) ^ (POLYNOMIAL & (0u - (b & 1u))); /* b * x: an x^32 term is P's rest */
    }
    return product;
}

/* x^(8n) mod P, bit-reflected: what a register is multiplied by as `n` zero bytes pass. */
uint32_t crc32_shift(int64_t n) {
    uint32_t power = 1u << 31, square = 1u << 30; /* x^0, and x^(2^i) for the i-th bit of 8n */
    for (uint64_t exponent = (uint64_t)n * 8; exponent; exponent >>= 1) {
        if (exponent & 1) power = multiply(power, square);
        square = multiply(square, square);
    }
    return power;
}

/* The CRC-32 of bytes A then B, as zlib's crc32 gives it, from A's (`before`) and B's taken
 * from 0 (`after`), `shift` = crc32_shift(the length of B): the register is linear in the
 * bytes and the register it starts from, and the inversions before and after cancel out. */
uint32_t crc32_combine(uint32_t before, uint32_t after, uint32_t shift) {
    return multiply(before, shift) ^ after;
}
