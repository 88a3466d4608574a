//! The handshake nonces both ends contribute to a session, and the one way
//! keys are bound to them: HKDF-SHA256 salted with dialer nonce ‖ acceptor
//! nonce (RFC 5869 §3.1: a salt that differs per session). The channel's
//! direction keys and the fibre stream's session key both use it.

use hkdf::Hkdf;
use sha2::Sha256;

/// Bytes of each side's handshake nonce (256 bits, fresh from the OS RNG).
pub const NONCE_LEN: usize = 32;

/// HKDF-SHA256 over `ikm`, salted with both nonces in dialer, acceptor
/// order.
pub fn session_hkdf(dialer: &[u8], acceptor: &[u8], ikm: &[u8]) -> Hkdf<Sha256> {
    let mut salt = [0u8; 2 * NONCE_LEN];
    salt[..NONCE_LEN].copy_from_slice(dialer);
    salt[NONCE_LEN..].copy_from_slice(acceptor);
    Hkdf::<Sha256>::new(Some(&salt), ikm)
}
