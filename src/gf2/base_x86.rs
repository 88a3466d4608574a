//! Schoolbook base cases of the Toeplitz middle product on x86_64 carry-less
//! multiply instructions (PCLMULQDQ on 128-bit, VPCLMULQDQ on 512-bit
//! registers).
//!
//! Each computes `r_u = ⊕_{j<h} ar[h−1−u+j] ⊗ b[j]` for `u < h` and writes
//! `out[u] = lo(r_u) ⊕ hi(r_{u−1})` (`h + 1` words). Layout: for a group of
//! eight consecutive outputs `u0 … u0+7` and one `j`, the eight seed words
//! needed are contiguous (`ar[h−8−u0+j+ℓ]` feeds `u = u0+7−ℓ`). So one
//! vector load of `ar`, one broadcast of `b[j]` and two multiplies (low and
//! high qword of every 128-bit lane) advance eight independent
//! accumulators; nothing is reduced horizontally. The key word `b[j]` only
//! ever sits in registers. Constant time: no branch or address depends on
//! the operands' values.

use std::arch::x86_64::*;

/// Largest base case the kernels take.
pub const KERNEL_MAX: usize = super::middle_product::BASE_MAX;
/// Words readable before the seed window (see
/// [`super::middle_product::SEED_PAD`]): the last, partial group of outputs
/// reads up to 7 of them; their products land in outputs ≥ h, which are
/// discarded.
const PAD: usize = super::middle_product::SEED_PAD;
const _: () = assert!(PAD >= 7);

/// Checks the shapes; false when `h` is too large for the kernels.
fn check(padded_ar: &[u64], b: &[u64], out: &[u64]) -> bool {
    let h = b.len();
    assert!(
        h >= 1 && padded_ar.len() == PAD + 2 * h - 1 && out.len() == h + 1,
        "base-case shapes"
    );
    h <= KERNEL_MAX
}

/// Folds the 128-bit sums of outputs `u0 … u0+len−1` into words:
/// `out[u] = lo(r_u) ⊕ hi(r_{u−1})`, carrying `hi` between groups.
fn fold_group(r: &[u128], u0: usize, out: &mut [u64], carry: &mut u64) {
    for (u, v) in r.iter().enumerate() {
        out[u0 + u] = *v as u64 ^ *carry;
        *carry = (*v >> 64) as u64;
    }
}

pub fn base_pclmul_checked(padded_ar: &[u64], b: &[u64], out: &mut [u64]) {
    if !check(padded_ar, b, out) {
        return super::middle_product::base_portable(padded_ar, b, out);
    }
    // SAFETY: shapes checked above; this kernel is only selected for
    // `ClmulBackend::Pclmulqdq`, which `ClmulBackend::available` offers only
    // when the CPU reports PCLMULQDQ.
    unsafe { base_pclmul(padded_ar, b, out) }
}

pub fn base_vpclmul_checked(padded_ar: &[u64], b: &[u64], out: &mut [u64]) {
    if !check(padded_ar, b, out) {
        return super::middle_product::base_portable(padded_ar, b, out);
    }
    // SAFETY: as above, for VPCLMULQDQ + AVX-512F.
    unsafe { base_vpclmul(padded_ar, b, out) }
}

/// `buf` is `ar` behind `PAD` words (`PAD + 2h − 1` words in all).
#[target_feature(enable = "pclmulqdq")]
unsafe fn base_pclmul(buf: &[u64], b: &[u64], out: &mut [u64]) {
    let h = b.len();
    let mut carry = 0u64;
    for u0 in (0..h).step_by(8) {
        // buf index of ar[h−8−u0]: ≥ PAD − 7 ≥ 0 because u0 ≤ h − 1; the
        // last word read is PAD + 2h − 2 − u0 < buf.len() = PAD + 2h − 1.
        let first = PAD + h - 8 - u0;
        let mut lo = [_mm_setzero_si128(); 4];
        let mut hi = [_mm_setzero_si128(); 4];
        for (j, &bj) in b.iter().enumerate() {
            let y = _mm_set1_epi64x(bj as i64);
            for p in 0..4 {
                // SAFETY: first + j + 2p + 1 ≤ PAD + 2h − 2 − u0 (see above).
                let x = unsafe { _mm_loadu_si128(buf.as_ptr().add(first + j + 2 * p).cast()) };
                lo[p] = _mm_xor_si128(lo[p], _mm_clmulepi64_si128(x, y, 0x00));
                hi[p] = _mm_xor_si128(hi[p], _mm_clmulepi64_si128(x, y, 0x01));
            }
        }
        let mut r = [0u128; 8];
        for p in 0..4 {
            // SAFETY: plain 16-byte reinterpretation (x86 is little endian).
            unsafe {
                r[7 - 2 * p] = std::mem::transmute::<__m128i, u128>(lo[p]);
                r[6 - 2 * p] = std::mem::transmute::<__m128i, u128>(hi[p]);
            }
        }
        fold_group(&r[..8.min(h - u0)], u0, out, &mut carry);
    }
    out[h] = carry;
}

/// `buf` is `ar` behind `PAD` words (`PAD + 2h − 1` words in all).
#[target_feature(enable = "avx512f,vpclmulqdq")]
unsafe fn base_vpclmul(buf: &[u64], b: &[u64], out: &mut [u64]) {
    let h = b.len();
    let mut carry = 0u64;
    // Two groups of eight outputs per pass share each broadcast of b[j]:
    // group L covers u0 … u0+7 and reads from `low`, group H covers
    // u0+8 … u0+15 and reads eight words earlier.
    for u0 in (0..h).step_by(16) {
        let low = PAD + h - 8 - u0;
        let has_high = u0 + 8 < h;
        let mut l_lo = _mm512_setzero_si512();
        let mut l_hi = _mm512_setzero_si512();
        let mut h_lo = _mm512_setzero_si512();
        let mut h_hi = _mm512_setzero_si512();
        for (j, &bj) in b.iter().enumerate() {
            let y = _mm512_set1_epi64(bj as i64);
            // SAFETY: low ≥ PAD − 7 ≥ 0 as u0 ≤ h − 1, and
            // low + j + 7 ≤ PAD + 2h − 2 − u0 < buf.len().
            let x = unsafe { _mm512_loadu_si512(buf.as_ptr().add(low + j).cast()) };
            l_lo = _mm512_xor_si512(l_lo, _mm512_clmulepi64_epi128(x, y, 0x00));
            l_hi = _mm512_xor_si512(l_hi, _mm512_clmulepi64_epi128(x, y, 0x01));
            if has_high {
                // SAFETY: group H exists only when u0 + 8 ≤ h − 1, so
                // low − 8 = PAD + h − 16 − u0 ≥ PAD − 7 ≥ 0.
                let x = unsafe { _mm512_loadu_si512(buf.as_ptr().add(low - 8 + j).cast()) };
                h_lo = _mm512_xor_si512(h_lo, _mm512_clmulepi64_epi128(x, y, 0x00));
                h_hi = _mm512_xor_si512(h_hi, _mm512_clmulepi64_epi128(x, y, 0x01));
            }
        }
        let mut r = [0u128; 16];
        for (acc, top) in [(l_lo, 7), (l_hi, 6), (h_lo, 15), (h_hi, 14)] {
            // SAFETY: __m512i is 64 plain bytes = four u128 lanes.
            let lanes = unsafe { std::mem::transmute::<__m512i, [u128; 4]>(acc) };
            for (t, v) in lanes.into_iter().enumerate() {
                r[top - 2 * t] = v;
            }
        }
        fold_group(&r[..16.min(h - u0)], u0, out, &mut carry);
    }
    out[h] = carry;
}

/// `dst = a ⊕ b` on 512-bit registers (for the Karatsuba levels).
pub fn xor_to_avx512(dst: &mut [u64], a: &[u64], b: &[u64]) {
    // SAFETY: only selected for `ClmulBackend::Vpclmulqdq`, which requires
    // AVX-512F.
    unsafe { xor_to_512(dst, a, b) }
}

/// `dst ⊕= src` on 512-bit registers.
pub fn xor_into_avx512(dst: &mut [u64], src: &[u64]) {
    // SAFETY: as above.
    unsafe { xor_into_512(dst, src) }
}

#[target_feature(enable = "avx512f")]
unsafe fn xor_to_512(dst: &mut [u64], a: &[u64], b: &[u64]) {
    super::middle_product::xor_to(dst, a, b)
}

#[target_feature(enable = "avx512f")]
unsafe fn xor_into_512(dst: &mut [u64], src: &[u64]) {
    super::middle_product::xor_into(dst, src)
}
