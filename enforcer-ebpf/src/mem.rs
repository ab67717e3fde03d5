//! Stores the compiler must not merge.
//!
//! On the BPF target every `memset` the compiler emits (for `[0; N]`, a cleared struct, or
//! neighbouring zero stores it merged) is a call to a byte loop, and a copy at alignment 1 is
//! byte by byte: an 80-byte clear was a fifth of an established packet's cost. Hot paths clear
//! through [`store`] (one volatile store per field: never merged) or in words.

/// Stores `v` in `*dst` as a store of its own.
#[inline(always)]
pub fn store<T: Copy>(dst: &mut T, v: T) {
    // SAFETY: `dst` is a valid, aligned, exclusive reference.
    unsafe { core::ptr::write_volatile(dst, v) }
}

/// Zeroes a padding array, byte by byte, without a call.
#[inline(always)]
pub fn zero_pad<const N: usize>(pad: &mut [u8; N]) {
    for b in pad.iter_mut() {
        store(b, 0);
    }
}
