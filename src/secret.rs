//! Secret types: the only home of key bytes in qkd-ipsec.
//!
//! Every key — QKD output, pool blocks, SA keys, authentication keys,
//! bootstrap secrets — lives in a [`SecretBytes`] (byte string) or a
//! [`SecretWords`] (packed bit string, 64 bits a word) or a fixed-size
//! [`Secret<N>`]. All three share one allocation scheme:
//!
//! * page-aligned memory of their own, locked with `mlock(2)` where the
//!   system allows it (an `RLIMIT_MEMLOCK` that is too small is reported once
//!   and tolerated: the key still works, it just may be swapped);
//! * zeroised (with volatile writes, `zeroize`) before it is unlocked and freed;
//! * no `Clone`, `Copy`, `Display`, `Serialize`; `Debug` prints only the type
//!   and length. Copying a secret is explicit ([`SecretBytes::duplicate`]).
//!
//! This module must not log, format or otherwise reveal the contents. Callers
//! read and write through [`SecretBytes::expose`] / [`SecretBytes::expose_mut`],
//! which keeps every place that touches key bytes greppable.
//!
//! Secret files (bootstrap secrets, credentials) are read and written by
//! [`file`]: 0600, refused when others could read them, written atomically.

pub mod file;

pub use file::{SecretFileError, load_secret_file, write_secret_file};

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};

use zeroize::Zeroize;

/// Set once an `mlock` has failed, so the warning is logged only once.
static MLOCK_WARNED: AtomicBool = AtomicBool::new(false);

fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as usize } else { 4096 }
}

/// A page-aligned, zero-initialised, best-effort locked region of `len`
/// elements of `T` (`u8` or `u64`). Zeroised before it is freed.
struct LockedRegion<T: Copy + Default + Zeroize> {
    ptr: NonNull<T>,
    len: usize,
    layout: Layout,
    locked: bool,
}

// SAFETY: the region is uniquely owned (no aliasing pointer escapes except
// through borrows of `self`), like a `Box<[T]>`.
unsafe impl<T: Copy + Default + Zeroize + Send> Send for LockedRegion<T> {}
// SAFETY: shared access only hands out `&[T]`.
unsafe impl<T: Copy + Default + Zeroize + Sync> Sync for LockedRegion<T> {}

impl<T: Copy + Default + Zeroize> LockedRegion<T> {
    fn new(len: usize) -> Self {
        let page = page_size();
        let bytes = len
            .checked_mul(size_of::<T>())
            .expect("secret length overflows usize");
        // Round up to whole pages so that munlock on drop never unlocks a page
        // shared with another allocation; allocate at least one page so the
        // pointer is real even for empty secrets.
        let size = bytes.max(1).div_ceil(page) * page;
        let layout = Layout::from_size_align(size, page.max(align_of::<T>()))
            .expect("secret layout is valid");
        // SAFETY: layout has non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw.cast::<T>()) else {
            std::alloc::handle_alloc_error(layout)
        };
        // SAFETY: ptr..ptr+size is a live allocation we own.
        let locked = unsafe { libc::mlock(raw.cast(), size) } == 0;
        if !locked && !MLOCK_WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "mlock failed ({}); secrets may be swapped to disk. \
                 Raise RLIMIT_MEMLOCK (LimitMEMLOCK= in the systemd unit) to lock them",
                std::io::Error::last_os_error()
            );
        }
        Self {
            ptr,
            len,
            layout,
            locked,
        }
    }

    fn as_slice(&self) -> &[T] {
        // SAFETY: the region holds `len` initialised (zeroed or written) `T`s,
        // and `T` is plain data for which all-zero bytes are valid.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as above, and `&mut self` guarantees uniqueness.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Copy + Default + Zeroize> Drop for LockedRegion<T> {
    fn drop(&mut self) {
        // Zeroise the whole allocation, slack included.
        // SAFETY: the allocation is layout.size() bytes long and owned by us.
        let all = unsafe {
            std::slice::from_raw_parts_mut(self.ptr.as_ptr().cast::<u8>(), self.layout.size())
        };
        all.zeroize();
        if self.locked {
            // SAFETY: same region that was locked in `new`.
            unsafe { libc::munlock(self.ptr.as_ptr().cast(), self.layout.size()) };
        }
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr.as_ptr().cast(), self.layout) };
    }
}

/// A secret byte string of fixed length (set at creation).
pub struct SecretBytes(LockedRegion<u8>);

impl SecretBytes {
    /// `len` zero bytes, ready to be filled through [`Self::expose_mut`].
    pub fn zeroed(len: usize) -> Self {
        Self(LockedRegion::new(len))
    }

    /// Copies `bytes` into a new secret. The caller remains responsible for
    /// zeroising its own copy.
    pub fn from_slice(bytes: &[u8]) -> Self {
        let mut s = Self::zeroed(bytes.len());
        s.expose_mut().copy_from_slice(bytes);
        s
    }

    /// Takes ownership of `bytes`, copying them into locked memory and
    /// zeroising the vector.
    pub fn from_vec(mut bytes: Vec<u8>) -> Self {
        let s = Self::from_slice(&bytes);
        bytes.zeroize();
        s
    }

    /// `len` bytes from the operating system's CSPRNG.
    pub fn random(len: usize) -> Result<Self, getrandom::Error> {
        let mut s = Self::zeroed(len);
        getrandom::fill(s.expose_mut())?;
        Ok(s)
    }

    /// An explicit copy; secrets are deliberately not `Clone`.
    pub fn duplicate(&self) -> Self {
        Self::from_slice(self.expose())
    }

    /// The key bytes. Every reader of key material goes through here.
    pub fn expose(&self) -> &[u8] {
        self.0.as_slice()
    }

    /// The key bytes, writable.
    pub fn expose_mut(&mut self) -> &mut [u8] {
        self.0.as_mut_slice()
    }

    pub fn len(&self) -> usize {
        self.0.len
    }

    pub fn is_empty(&self) -> bool {
        self.0.len == 0
    }

    /// Whether the memory is locked against swapping.
    pub fn is_locked(&self) -> bool {
        self.0.locked
    }

    /// Constant-time comparison (length is not secret).
    pub fn ct_eq(&self, other: &Self) -> bool {
        ct_eq(self.expose(), other.expose())
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes(<redacted {} bytes>)", self.len())
    }
}

/// A secret bit string packed into little-endian 64-bit words: bit `i` is
/// bit `i % 64` of word `i / 64`. Bits past `bits` in the last word are zero.
/// This is the working type of the QKD stack (sifted, reconciled, final keys).
pub struct SecretWords {
    words: LockedRegion<u64>,
    bits: usize,
}

impl SecretWords {
    /// `bits` zero bits.
    pub fn zeroed(bits: usize) -> Self {
        Self {
            words: LockedRegion::new(bits.div_ceil(64)),
            bits,
        }
    }

    /// An explicit copy; secrets are deliberately not `Clone`.
    pub fn duplicate(&self) -> Self {
        let mut s = Self::zeroed(self.bits);
        s.expose_mut().copy_from_slice(self.expose());
        s
    }

    /// Number of bits.
    pub fn bits(&self) -> usize {
        self.bits
    }

    pub fn expose(&self) -> &[u64] {
        self.words.as_slice()
    }

    pub fn expose_mut(&mut self) -> &mut [u64] {
        self.words.as_mut_slice()
    }

    pub fn get(&self, i: usize) -> bool {
        assert!(i < self.bits, "bit index {i} out of range {}", self.bits);
        (self.expose()[i / 64] >> (i % 64)) & 1 == 1
    }

    pub fn set(&mut self, i: usize, v: bool) {
        assert!(i < self.bits, "bit index {i} out of range {}", self.bits);
        let w = &mut self.expose_mut()[i / 64];
        let m = 1u64 << (i % 64);
        if v { *w |= m } else { *w &= !m }
    }

    pub fn flip(&mut self, i: usize) {
        assert!(i < self.bits, "bit index {i} out of range {}", self.bits);
        self.expose_mut()[i / 64] ^= 1u64 << (i % 64);
    }

    /// The first `len` bits as bytes (bit `i` is bit `i % 8` of byte `i / 8`),
    /// for handing QKD output to the key pool.
    pub fn to_bytes(&self, len_bytes: usize) -> SecretBytes {
        assert!(len_bytes * 8 <= self.bits, "asked for more bytes than bits");
        let mut out = SecretBytes::zeroed(len_bytes);
        for (i, b) in out.expose_mut().iter_mut().enumerate() {
            *b = (self.expose()[i / 8] >> ((i % 8) * 8)) as u8;
        }
        out
    }

    /// Constant-time comparison (length is not secret).
    pub fn ct_eq(&self, other: &Self) -> bool {
        self.bits == other.bits
            && ct_eq(
                bytemuck_words(self.expose()),
                bytemuck_words(other.expose()),
            )
    }
}

fn bytemuck_words(w: &[u64]) -> &[u8] {
    // SAFETY: u64 has no padding and u8 has alignment 1.
    unsafe { std::slice::from_raw_parts(w.as_ptr().cast::<u8>(), std::mem::size_of_val(w)) }
}

impl fmt::Debug for SecretWords {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretWords(<redacted {} bits>)", self.bits)
    }
}

/// A secret of exactly `N` bytes, e.g. an SA key ([`SaKey`]).
pub struct Secret<const N: usize>(SecretBytes);

impl<const N: usize> Secret<N> {
    pub fn zeroed() -> Self {
        Self(SecretBytes::zeroed(N))
    }

    /// Copies `bytes`, which must be exactly `N` long.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        (bytes.len() == N).then(|| Self(SecretBytes::from_slice(bytes)))
    }

    pub fn random() -> Result<Self, getrandom::Error> {
        Ok(Self(SecretBytes::random(N)?))
    }

    pub fn duplicate(&self) -> Self {
        Self(self.0.duplicate())
    }

    pub fn expose(&self) -> &[u8; N] {
        self.0.expose().try_into().expect("length is N")
    }

    pub fn expose_mut(&mut self) -> &mut [u8; N] {
        self.0.expose_mut().try_into().expect("length is N")
    }

    pub fn ct_eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0)
    }
}

impl<const N: usize> fmt::Debug for Secret<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret<{N}>(<redacted>)")
    }
}

/// Key material of one `rfc4106(gcm(aes))` SA: a 256-bit AES key followed by
/// the 4-byte salt (RFC 4106 §8.1), 288 bits in XFRM's `alg_key_len`.
pub type SaKey = Secret<36>;

/// Compares two byte strings in time independent of where they differ.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut acc = 0u8;
    for (x, y) in a.iter().zip(b) {
        acc |= x ^ y;
    }
    // black_box keeps the optimiser from short-circuiting the loop.
    std::hint::black_box(acc) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let pattern = [0xA5u8; 36];
        let k = SaKey::from_slice(&pattern).unwrap();
        let b = SecretBytes::from_slice(&pattern);
        let mut w = SecretWords::zeroed(128);
        w.expose_mut()[0] = 0xA5A5_A5A5_A5A5_A5A5;
        for shown in [
            format!("{k:?}"),
            format!("{k:#?}"),
            format!("{b:?}"),
            format!("{w:?}"),
        ] {
            let lower = shown.to_lowercase();
            assert!(shown.contains("redacted"), "{shown}");
            assert!(!lower.contains("a5"), "key bytes leaked: {shown}");
            assert!(!shown.contains("165"), "key bytes leaked: {shown}");
        }
        assert_eq!(format!("{k:?}"), "Secret<36>(<redacted>)");
        assert_eq!(format!("{b:?}"), "SecretBytes(<redacted 36 bytes>)");
    }

    #[test]
    fn roundtrip_and_compare() {
        let a = SecretBytes::random(100).unwrap();
        let b = a.duplicate();
        assert!(a.ct_eq(&b));
        let mut c = a.duplicate();
        c.expose_mut()[99] ^= 1;
        assert!(!a.ct_eq(&c));
        assert_eq!(a.len(), 100);
        assert!(SaKey::from_slice(&[0u8; 35]).is_none());
    }

    #[test]
    fn words_bits_and_bytes() {
        let mut w = SecretWords::zeroed(70);
        w.set(0, true);
        w.set(9, true);
        w.set(69, true);
        assert!(w.get(69) && w.get(9) && !w.get(1));
        w.flip(9);
        assert!(!w.get(9));
        let b = w.to_bytes(8);
        assert_eq!(b.expose()[0], 1);
        assert_eq!(w.expose()[1], 1 << 5);
    }

    #[test]
    fn empty_secret_is_valid() {
        let e = SecretBytes::zeroed(0);
        assert!(e.is_empty());
        assert_eq!(e.expose(), &[] as &[u8]);
    }

    #[test]
    fn memory_is_zeroed_after_drop_path_runs() {
        // Drop must not panic for odd sizes and must cover the slack.
        for len in [1, 4095, 4096, 4097, 10_000] {
            let mut s = SecretBytes::zeroed(len);
            s.expose_mut().fill(0xFF);
            drop(s);
        }
    }
}
