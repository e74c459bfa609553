/* tt_math.c — tt_expf and tt_logf without libm (see tt_math.h).
 *
 * Both use the classic scheme: reduce the argument exactly with a split ln 2 (Cody–Waite),
 * evaluate a short polynomial on the small remainder, then rebuild.  The polynomials are
 * Taylor series truncated where the next term is < 1e-8 relative (well below float32's
 * 6e-8 unit roundoff), so the error is dominated by the few float roundings: <= 1 ulp
 * against the correctly rounded result (tests/test_firmware_parity.py sweeps both). */
#include "tt_math.h"

#include <stdint.h>

typedef union { float f; uint32_t u; } tt_bits;   /* C99 allows punning through a union */

static float from_bits(uint32_t u) { tt_bits b; b.u = u; return b.f; }
static uint32_t to_bits(float f) { tt_bits b; b.f = f; return b.u; }

/* ln 2 split so that n * LN2_HI is exact for |n| <= 2^9 (LN2_HI has 15 significant bits). */
#define LN2_HI 6.93145751953125e-1f
#define LN2_LO 1.42860682030941723212e-6f
#define LOG2E 1.44269504088896341f

/* 2^n as a float for -126 <= n <= 127. */
static float pow2i(int32_t n) { return from_bits((uint32_t)(n + 127) << 23); }

float tt_expf(float x) {
    float fn, r, p;
    int32_t n;
    if (x != x) return x;                       /* NaN */
    if (x > 88.7228394f) return from_bits(0x7f800000u);   /* overflow -> +inf */
    if (x < -103.972084f) return 0.0f;          /* below half the smallest subnormal */
    /* x = n ln2 + r, |r| <= ln2/2 */
    fn = x * LOG2E;
    n = (int32_t)(fn + (fn < 0.0f ? -0.5f : 0.5f));
    fn = (float)n;
    r = (x - fn * LN2_HI) - fn * LN2_LO;
    /* e^r = 1 + r + r^2/2! + ... + r^7/7!  (|r|^8/8! < 6e-9) */
    p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r * r + r;   /* r + r^2 (1/2 + ...) keeps the leading term exact */
    p = 1.0f + p;
    if (n > 127) return (p * 2.0f) * pow2i(n - 1);          /* 88.72 rounds to n = 128 */
    if (n < -125) return (p * pow2i(n + 100)) * pow2i(-100); /* subnormal result: scale twice */
    return p * pow2i(n);
}

float tt_logf(float x) {
    uint32_t u = to_bits(x);
    int32_t e;
    float m, f, s, z, R, hfsq, fe;
    if (x != x) return x;                                   /* NaN */
    if ((u & 0x7fffffffu) == 0) return from_bits(0xff800000u); /* +-0 -> -inf */
    if (u >> 31) return from_bits(0x7fc00000u);              /* x < 0 -> NaN */
    if (u == 0x7f800000u) return x;                          /* +inf */
    e = 0;
    if (u < 0x00800000u) {                                   /* subnormal: scale by 2^25 */
        x *= 33554432.0f;
        u = to_bits(x);
        e = -25;
    }
    /* x = 2^e * m with m in [sqrt(2)/2, sqrt(2)) */
    e += (int32_t)(u >> 23) - 127;
    u = (u & 0x007fffffu) | 0x3f800000u;                     /* m in [1, 2) */
    if (u > 0x3fb504f3u) {                                   /* m > sqrt(2): halve */
        u -= 0x00800000u;
        e += 1;
    }
    m = from_bits(u);
    f = m - 1.0f;                                            /* exact (Sterbenz) */
    /* log(1+f) = 2 atanh(s), s = f/(2+f) = f - hfsq + s (hfsq + R), R = sum_{k=1..5} 2 z^k/(2k+1);
     * |s| <= 0.172, so the first omitted term is < z^6 / 13 < 5e-11 relative */
    s = f / (2.0f + f);
    z = s * s;
    R = 2.0f / 11.0f;
    R = R * z + 2.0f / 9.0f;
    R = R * z + 2.0f / 7.0f;
    R = R * z + 2.0f / 5.0f;
    R = R * z + 2.0f / 3.0f;
    R = R * z;
    hfsq = 0.5f * f * f;
    fe = (float)e;
    return fe * LN2_HI - ((hfsq - (s * (hfsq + R) + fe * LN2_LO)) - f);
}
