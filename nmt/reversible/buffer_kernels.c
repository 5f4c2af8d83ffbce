/* The information buffer's integer loops (see buffer.py for the algorithm), compiled on first use
 * by native.py. Each call does one forget or unforget step over a (rows x cols) block of elements
 * in one pass, with the same results bit for bit as the tensor code: the words land in the same
 * order, the heads and outputs are equal. The int64 floor divisions go through a double quotient
 * corrected from its remainder, which vectorises (an int64 division does not); a row whose
 * values are too large for that (|a| >= 2**52, never met by real states) is redone exactly.
 */
#include <stdint.h>

static inline int64_t floor_div_fast(int64_t a, int64_t n) {
    int64_t q = (int64_t)((double)a / (double)n);  /* truncated; exact for 0 <= a < 2**52 */
    int64_t rem = a - q * n;
    q -= (rem < 0);   /* negative a: truncation rounded up */
    q += (rem >= n);  /* (large a only) */
    return q;
}

static inline int64_t floor_div_exact(int64_t a, int64_t n) {
    int64_t q = a / n;
    return q - ((a % n != 0) & (a < 0));
}

static inline int64_t shift_left(int64_t value, int bits) {  /* two's complement, defined in C */
    return (int64_t)((uint64_t)value << bits);
}

/* 1 if every gate numerator is in [1, 2**r] (checked before anything is written). */
static int gates_valid(const int64_t *restrict n, int64_t count, int r) {
    int64_t bad = 0;
    for (int64_t k = 0; k < count; k++) bad |= (n[k] < 1) | (n[k] > ((int64_t)1 << r));
    return !bad;
}

/* h <- h * n / 2**r exactly (one step of `forget`). h, n, out: contiguous rows x cols; head:
 * int32 rows with stride head_stride; words: room for rows * cols + 1 words (one spare: a word
 * is always written, kept only when it spills); hist: counts of each n. Returns the words
 * written, or -1 (nothing changed) if a gate numerator is outside [1, 2**r]. */
int64_t revnmt_forget(const int64_t *restrict h, const int64_t *restrict n,
                      int32_t *restrict head, int64_t head_stride, int64_t rows, int64_t cols,
                      int w, int r, int16_t *restrict words, int64_t *restrict hist,
                      int64_t *restrict out) {
    const int64_t low_w = ((int64_t)1 << w) - 1, low_r = ((int64_t)1 << r) - 1;
    const int64_t offset = (int64_t)1 << (w - 1);
    int64_t count = 0;
    if (!gates_valid(n, rows * cols, r)) return -1;
    for (int64_t i = 0; i < rows; i++) {
        const int64_t *hi = h + i * cols, *ni = n + i * cols;
        int32_t *headi = head + i * head_stride;
        int64_t *outi = out + i * cols;
        for (int64_t j = 0; j < cols; j++) {  /* spill the heads that would overflow, in order */
            int64_t state = headi[j];
            int64_t spill = state >= shift_left(ni[j], w);
            hist[ni[j]] += 1;
            words[count] = (int16_t)((state & low_w) - offset);
            count += spill;
            headi[j] = (int32_t)(spill ? state >> w : state);
        }
        for (int64_t j = 0; j < cols; j++) {  /* the bijection; state < 2**36, so the fast
                                                 division is exact */
            int64_t nj = ni[j], hj = hi[j];
            int64_t state = shift_left(headi[j], r) | (hj & low_r);
            int64_t q = floor_div_fast(state, nj);
            outi[j] = (hj >> r) * nj + (state - q * nj);
            headi[j] = (int32_t)q;
        }
    }
    return count;
}

/* The exact inverse: pops the words of the matching forget from words[0..top). Returns the new
 * top, -1 (nothing changed) if a gate numerator is outside [1, 2**r], or -2 if the step needs
 * more words than the stack holds (it did not come from this buffer's forget). */
int64_t revnmt_unforget(const int64_t *restrict h, const int64_t *restrict n,
                        int32_t *restrict head, int64_t head_stride, int64_t rows, int64_t cols,
                        int w, int r, int64_t lower, const int16_t *restrict words, int64_t top,
                        int64_t *restrict out) {
    const int64_t low_r = ((int64_t)1 << r) - 1;
    const int64_t offset = (int64_t)1 << (w - 1);
    if (!gates_valid(n, rows * cols, r)) return -1;
    for (int64_t i = 0; i < rows; i++) {
        const int64_t *hi = h + i * cols, *ni = n + i * cols;
        int32_t *headi = head + i * head_stride;
        int64_t *outi = out + i * cols;
        int64_t inexact = 0;
        for (int64_t j = 0; j < cols; j++) {  /* quotients first (into out) */
            int64_t q = floor_div_fast(hi[j], ni[j]);
            int64_t rem = hi[j] - q * ni[j];
            inexact |= (rem < 0) | (rem >= ni[j]);
            outi[j] = q;
        }
        if (inexact) {  /* some |h| >= 2**52: this row's quotients exactly */
            for (int64_t j = 0; j < cols; j++) outi[j] = floor_div_exact(hi[j], ni[j]);
        }
        for (int64_t j = 0; j < cols; j++) {
            int64_t nj = ni[j], q = outi[j];
            int64_t state = (int64_t)headi[j] * nj + (hi[j] - q * nj);
            outi[j] = shift_left(q, r) | (state & low_r);
            headi[j] = (int32_t)(state >> r);
        }
    }
    for (int64_t i = rows - 1; i >= 0; i--) {  /* refill the heads that spilled, last element first */
        int32_t *headi = head + i * head_stride;
        for (int64_t j = cols - 1; j >= 0; j--) {
            if (headi[j] < lower) {
                if (top == 0) return -2;  /* more refills than words: not this buffer's step */
                headi[j] = (int32_t)(shift_left(headi[j], w) | ((int64_t)words[--top] + offset));
            }
        }
    }
    return top;
}
