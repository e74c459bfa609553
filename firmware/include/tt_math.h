/* tt_math.h — freestanding float32 exp and log for the training library.
 * Why: the firmware links without libm (-nostdlib), yet softmax cross-entropy must match
 * PyTorch's float32 results to ~1e-6 relative; both functions are within ~1 ulp of the
 * correctly rounded result over their whole range (tests/test_firmware_parity.py checks). */
#ifndef TT_MATH_H
#define TT_MATH_H

/* e^x; +inf above ~88.72, +0 below ~-103.97 (subnormals in between), NaN -> NaN. */
float tt_expf(float x);
/* natural log; -inf at +-0, NaN for x < 0 or NaN, +inf at +inf; subnormals handled. */
float tt_logf(float x);

#endif
