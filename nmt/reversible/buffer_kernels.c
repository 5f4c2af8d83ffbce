/* The information buffer's integer loops (see buffer.py for the algorithm), compiled on first use
 * by native.py. Each call does one forget or unforget step over a (rows x cols) block of elements
 * in one pass, with the same results bit for bit as the tensor code: the words land in the same
 * order, the heads and outputs are equal. The int64 floor divisions go through a double quotient
 * corrected from its remainder, which vectorises (an int64 division does not); a row whose
 * values are too large for that (|a| >= 2**52, never met by real states) is redone exactly.
 */
#include <math.h>
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

/* One row of a forget step (see revnmt_forget): spills, then the bijection. Returns the words
 * written from words[0]. */
static inline int64_t forget_row(const int64_t *restrict hi, const int64_t *restrict ni,
                                 int32_t *restrict headi, int64_t cols, int w, int r,
                                 int16_t *restrict words, int64_t *restrict hist,
                                 int64_t *restrict outi) {
    const int64_t low_w = ((int64_t)1 << w) - 1, low_r = ((int64_t)1 << r) - 1;
    const int64_t offset = (int64_t)1 << (w - 1);
    int64_t count = 0;
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
    return count;
}

/* One row of an unforget step before the refills (see revnmt_unforget). */
static inline void unforget_row(const int64_t *restrict hi, const int64_t *restrict ni,
                                int32_t *restrict headi, int64_t cols, int r,
                                int64_t *restrict outi) {
    const int64_t low_r = ((int64_t)1 << r) - 1;
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

/* Refill the heads that spilled, last element first. Returns the new top, or -2 when more words
 * are needed than words[0..top) holds. */
static int64_t refill(int32_t *restrict head, int64_t head_stride, int64_t rows, int64_t cols,
                      int w, int64_t lower, const int16_t *restrict words, int64_t top) {
    const int64_t offset = (int64_t)1 << (w - 1);
    for (int64_t i = rows - 1; i >= 0; i--) {
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

/* h <- h * n / 2**r exactly (one step of `forget`). h, n, out: contiguous rows x cols; head:
 * int32 rows with stride head_stride; words: room for rows * cols + 1 words (one spare: a word
 * is always written, kept only when it spills); hist: counts of each n. Returns the words
 * written, or -1 (nothing changed) if a gate numerator is outside [1, 2**r]. */
int64_t revnmt_forget(const int64_t *restrict h, const int64_t *restrict n,
                      int32_t *restrict head, int64_t head_stride, int64_t rows, int64_t cols,
                      int w, int r, int16_t *restrict words, int64_t *restrict hist,
                      int64_t *restrict out) {
    int64_t count = 0;
    if (!gates_valid(n, rows * cols, r)) return -1;
    for (int64_t i = 0; i < rows; i++)
        count += forget_row(h + i * cols, n + i * cols, head + i * head_stride, cols, w, r,
                            words + count, hist, out + i * cols);
    return count;
}

/* The exact inverse: pops the words of the matching forget from words[0..top). Returns the new
 * top, -1 (nothing changed) if a gate numerator is outside [1, 2**r], or -2 if the step needs
 * more words than the stack holds (it did not come from this buffer's forget). */
int64_t revnmt_unforget(const int64_t *restrict h, const int64_t *restrict n,
                        int32_t *restrict head, int64_t head_stride, int64_t rows, int64_t cols,
                        int w, int r, int64_t lower, const int16_t *restrict words, int64_t top,
                        int64_t *restrict out) {
    if (!gates_valid(n, rows * cols, r)) return -1;
    for (int64_t i = 0; i < rows; i++)
        unforget_row(h + i * cols, n + i * cols, head + i * head_stride, cols, r, out + i * cols);
    return refill(head, head_stride, rows, cols, w, lower, words, top);
}

/* -- fused gate steps (gated.py, fixed_point.py): the float arithmetic around a forget --------
 * Each float operation is one IEEE operation of the tensor code, in its order (built with
 * -ffp-contract=off: no fused multiply-adds), so the results are the same bit for bit. */

#define HIDDEN_SCALE 8388608.0f  /* 2**23: fixed_point.HIDDEN_RADIX */

/* forget_gate's quantisation of s = sigmoid(logits) (count contiguous elements): z = a s + b,
 * num = clamp(rint(z scale), n_min, n_max); n = num, z_q = num inv_scale, and (slope not NULL)
 * slope = a s (1 - s). */
void revnmt_quantize(const float *restrict s, int64_t count, float a, float b, float scale,
                     float n_min, float n_max, float inv_scale, int64_t *restrict n,
                     float *restrict zq, float *restrict slope) {
    for (int64_t k = 0; k < count; k++) {
        float scaled = a * s[k];
        float num = rintf((scaled + b) * scale);
        num = num < n_min ? n_min : num;
        num = num > n_max ? n_max : num;
        n[k] = (int64_t)num;
        zq[k] = num * inv_scale;
    }
    if (slope)
        for (int64_t k = 0; k < count; k++) slope[k] = (a * s[k]) * (1.0f - s[k]);
}

/* The gate applied at (row, column): identity on padded rows and on the stored columns. */
static inline void effective_row(const int64_t *restrict ni, int real, int64_t stored,
                                 int64_t cols, int r, int64_t *restrict n_row) {
    for (int64_t j = 0; j < cols; j++) n_row[j] = (real && j >= stored) ? ni[j] : ((int64_t)1 << r);
}

static int gated_gates_valid(const int64_t *restrict n, const uint8_t *restrict real,
                             int64_t stored, int64_t rows, int64_t cols, int r) {
    int64_t bad = 0;
    for (int64_t i = 0; i < rows; i++) {
        if (real && !real[i]) continue;
        for (int64_t j = stored; j < cols; j++)
            bad |= (n[i * cols + j] < 1) | (n[i * cols + j] > ((int64_t)1 << r));
    }
    return !bad;
}

/* gated_step's exact update: out = forget(h, n_eff) + round(update 2**23) on real rows (real:
 * one byte per row, or NULL when every row is real; padded rows keep h), the first `stored`
 * columns round_to_storage(z_q value + update) at 32 bits (h on padded rows); value_out is
 * from_fixed(out). h, n, update, out, value_out contiguous rows x cols; zq and value are read
 * only when stored > 0. Returns the words written, or -1 (nothing changed) for a bad gate. */
int64_t revnmt_gated_forget(const int64_t *restrict h, const int64_t *restrict n,
                            const float *restrict update, const uint8_t *restrict real,
                            int64_t stored, const float *restrict zq, const float *restrict value,
                            int32_t *restrict head, int64_t head_stride, int64_t rows,
                            int64_t cols, int w, int r, int16_t *restrict words,
                            int64_t *restrict hist, int64_t *restrict out,
                            float *restrict value_out) {
    int64_t count = 0, n_row[cols];
    if (!gated_gates_valid(n, real, stored, rows, cols, r)) return -1;
    for (int64_t i = 0; i < rows; i++) {
        const int64_t *hi = h + i * cols;
        const float *ui = update + i * cols;
        int64_t *outi = out + i * cols;
        float *vi = value_out + i * cols;
        int live = real ? real[i] != 0 : 1;
        effective_row(n + i * cols, live, stored, cols, r, n_row);
        count += forget_row(hi, n_row, head + i * head_stride, cols, w, r, words + count, hist,
                            outi);
        if (live)
            for (int64_t j = 0; j < cols; j++) outi[j] += (int64_t)rintf(ui[j] * HIDDEN_SCALE);
        for (int64_t j = 0; j < stored; j++) {
            if (live) {
                float product = zq[i * cols + j] * value[i * cols + j];
                float surrogate = product + ui[j];
                outi[j] = (int64_t)rint((double)surrogate * (double)HIDDEN_SCALE);
            } else {
                outi[j] = hi[j];
            }
        }
        for (int64_t j = 0; j < cols; j++) vi[j] = (float)outi[j] * (1.0f / HIDDEN_SCALE);
    }
    return count;
}

/* undo_step's exact inverse of revnmt_gated_forget: out = unforget(h_next - step, n_eff), its
 * first `stored` columns `restored` (rows with stride restored_stride) on real rows and h_next on
 * padded rows. Returns the new top, -1 for a bad gate, -2 for too few words (as unforget). */
int64_t revnmt_gated_unforget(const int64_t *restrict h_next, const int64_t *restrict n,
                              const float *restrict update, const uint8_t *restrict real,
                              int64_t stored, const int64_t *restrict restored,
                              int64_t restored_stride, int32_t *restrict head,
                              int64_t head_stride, int64_t rows, int64_t cols, int w, int r,
                              int64_t lower, const int16_t *restrict words, int64_t top,
                              int64_t *restrict out) {
    int64_t n_row[cols], h_row[cols];
    if (!gated_gates_valid(n, real, stored, rows, cols, r)) return -1;
    for (int64_t i = 0; i < rows; i++) {
        const int64_t *hi = h_next + i * cols;
        const float *ui = update + i * cols;
        int live = real ? real[i] != 0 : 1;
        effective_row(n + i * cols, live, stored, cols, r, n_row);
        for (int64_t j = 0; j < cols; j++)
            h_row[j] = live ? hi[j] - (int64_t)rintf(ui[j] * HIDDEN_SCALE) : hi[j];
        unforget_row(h_row, n_row, head + i * head_stride, cols, r, out + i * cols);
    }
    top = refill(head, head_stride, rows, cols, w, lower, words, top);
    if (top < 0) return top;
    for (int64_t i = 0; i < rows; i++) {
        int live = real ? real[i] != 0 : 1;
        for (int64_t j = 0; j < stored; j++)
            out[i * cols + j] = live ? restored[i * restored_stride + j] : h_next[i * cols + j];
    }
    return top;
}

/* RevLSTMCell.backward_step's elementwise part for one half, each product in the tensor code's
 * order (rows x cols, contiguous; real: one byte per row or NULL when every row is real):
 * d_h, d_c: the gradients before the step; d_gates: rows x 5 cols, [f, i, o, p, g] per row. */
void revnmt_lstm_backward(int64_t rows, int64_t cols, const uint8_t *restrict real,
                          const float *restrict grad_h, const float *restrict grad_c_in,
                          const float *restrict p_q, const float *restrict f_q,
                          const float *restrict out_gate, const float *restrict tanh_cell,
                          const float *restrict previous, const float *restrict previous_cell,
                          const float *restrict inp, const float *restrict cand,
                          const float *restrict f_slope, const float *restrict p_slope,
                          float *restrict d_h, float *restrict d_c, float *restrict d_gates) {
    for (int64_t i = 0; i < rows; i++) {
        int live = real ? real[i] != 0 : 1;
        float *df = d_gates + i * 5 * cols, *di = df + cols, *dO = di + cols, *dp = dO + cols,
              *dg = dp + cols;
        for (int64_t j = 0; j < cols; j++) {
            int64_t k = i * cols + j;
            float gh = grad_h[k], live_h = live ? gh : 0.0f;
            float t = tanh_cell[k], o = out_gate[k], in = inp[k], g = cand[k];
            d_h[k] = live ? gh * p_q[k] : gh;
            float through = (live_h * o) * (1.0f - t * t);
            float gc = grad_c_in[k] + through, live_c = live ? gc : 0.0f;
            d_c[k] = live ? gc * f_q[k] : gc;
            df[j] = (live_c * previous_cell[k]) * f_slope[k];
            di[j] = ((live_c * g) * in) * (1.0f - in);
            dO[j] = ((live_h * t) * o) * (1.0f - o);
            dp[j] = (live_h * previous[k]) * p_slope[k];
            dg[j] = (live_c * in) * (1.0f - g * g);
        }
    }
}

/* revnmt_lstm_backward from a kept tape: the activations [f, i, o, p, g] (row stride
 * act_stride), f and p quantised as revnmt_quantize (q: its a, b, scale, n_min, n_max,
 * inv_scale) and the int64 states h, c before the step as revnmt_from_fixed: the same values. */
void revnmt_lstm_backward_kept(int64_t rows, int64_t cols, const uint8_t *restrict real,
                               const float *restrict grad_h, const float *restrict grad_c_in,
                               const float *restrict acts, int64_t act_stride,
                               const int64_t *restrict h, const int64_t *restrict c,
                               const float *restrict tanh_cell, const float *restrict q,
                               float *restrict d_h, float *restrict d_c, float *restrict d_gates) {
    const float a = q[0], b = q[1], scale = q[2], n_min = q[3], n_max = q[4], inv = q[5];
    for (int64_t i = 0; i < rows; i++) {
        int live = real ? real[i] != 0 : 1;
        const float *sf = acts + i * act_stride, *si = sf + cols, *so = si + cols,
                    *sp = so + cols, *sg = sp + cols;
        float *df = d_gates + i * 5 * cols, *di = df + cols, *dO = di + cols, *dp = dO + cols,
              *dg = dp + cols;
        for (int64_t j = 0; j < cols; j++) {
            int64_t k = i * cols + j;
            float fs = sf[j], ps = sp[j];
            float fn = rintf((a * fs + b) * scale), pn = rintf((a * ps + b) * scale);
            fn = fn < n_min ? n_min : fn;
            fn = fn > n_max ? n_max : fn;
            pn = pn < n_min ? n_min : pn;
            pn = pn > n_max ? n_max : pn;
            float f_q = fn * inv, p_q = pn * inv;
            float f_slope = (a * fs) * (1.0f - fs), p_slope = (a * ps) * (1.0f - ps);
            float previous = (float)h[k] * (1.0f / HIDDEN_SCALE);
            float previous_cell = (float)c[k] * (1.0f / HIDDEN_SCALE);
            float gh = grad_h[k], live_h = live ? gh : 0.0f;
            float t = tanh_cell[k], o = so[j], in = si[j], g = sg[j];
            d_h[k] = live ? gh * p_q : gh;
            float through = (live_h * o) * (1.0f - t * t);
            float gc = grad_c_in[k] + through, live_c = live ? gc : 0.0f;
            d_c[k] = live ? gc * f_q : gc;
            df[j] = (live_c * previous_cell) * f_slope;
            di[j] = ((live_c * g) * in) * (1.0f - in);
            dO[j] = ((live_h * t) * o) * (1.0f - o);
            dp[j] = (live_h * previous) * p_slope;
            dg[j] = (live_c * in) * (1.0f - g * g);
        }
    }
}

/* fixed_point.from_fixed: the float32 value h / 2**23 of `count` contiguous int64 (the int64 is
 * rounded to float32, then scaled by an exact power of two, as the tensor code's product). */
void revnmt_from_fixed(const int64_t *restrict h, int64_t count, float *restrict out) {
    for (int64_t k = 0; k < count; k++) out[k] = (float)h[k] * (1.0f / HIDDEN_SCALE);
}

/* RevGRUCell.backward_step for one half, up to its first product (rows x own, contiguous; real:
 * one byte per row or NULL): d_h (the gradient before the step), d_candidate, and d_logits'
 * first own columns (its rows are own + other_cols wide). */
void revnmt_gru_backward_a(int64_t rows, int64_t own, int64_t other_cols,
                           const uint8_t *restrict real, const float *restrict grad,
                           const float *restrict z_q, const float *restrict cand,
                           const float *restrict previous, const float *restrict slope,
                           float *restrict d_h, float *restrict d_candidate,
                           float *restrict d_logits) {
    for (int64_t i = 0; i < rows; i++) {
        int live = real ? real[i] != 0 : 1;
        float *dl = d_logits + i * (own + other_cols);
        for (int64_t j = 0; j < own; j++) {
            int64_t k = i * own + j;
            float g = grad[k], live_g = live ? g : 0.0f, z = z_q[k], c = cand[k];
            d_h[k] = live ? g * z : g;
            d_candidate[k] = (live_g * (1.0f - z)) * (1.0f - c * c);
            dl[j] = (live_g * (previous[k] - c)) * slope[k];
        }
    }
}

/* The rest, given d_reset_other = d_candidate @ W (rows x other_cols, as other, reset, d_other):
 * d_logits' last other_cols columns, and partial = d_other + d_reset_other reset (to which the
 * caller adds d_logits @ W_gates). */
void revnmt_gru_backward_b(int64_t rows, int64_t own, int64_t other_cols,
                           const float *restrict d_reset_other, const float *restrict other,
                           const float *restrict reset, const float *restrict d_other,
                           float *restrict d_logits, float *restrict partial) {
    for (int64_t i = 0; i < rows; i++) {
        float *dl = d_logits + i * (own + other_cols) + own;
        for (int64_t j = 0; j < other_cols; j++) {
            int64_t k = i * other_cols + j;
            float dro = d_reset_other[k], r = reset[k];
            dl[j] = ((dro * other[k]) * r) * (1.0f - r);
            partial[k] = d_other[k] + dro * r;
        }
    }
}
