//! Splitting a key into XOR shares for node-disjoint paths, and joining
//! them: `K = K₁ ⊕ … ⊕ Kₙ` with `K₁ … Kₙ₋₁` uniform from the OS RNG. Any
//! `n − 1` shares are independent of `K`, so a relay on one path (which
//! sees one share) learns nothing of `K`.

use crate::secret::SecretBytes;

/// `n` shares of `key` (`n ≥ 1`; one share is the key itself).
pub fn split(key: &SecretBytes, n: usize) -> Result<Vec<SecretBytes>, getrandom::Error> {
    assert!(n >= 1, "at least one share");
    let mut last = SecretBytes::from_slice(key.expose());
    let mut shares = Vec::with_capacity(n);
    for _ in 1..n {
        let mut s = SecretBytes::zeroed(key.len());
        getrandom::fill(s.expose_mut())?;
        xor_into(&mut last, &s);
        shares.push(s);
    }
    shares.push(last);
    Ok(shares)
}

/// The key the shares make. `None` if they differ in length or none is
/// given.
pub fn join(shares: &[SecretBytes]) -> Option<SecretBytes> {
    let first = shares.first()?;
    if shares.iter().any(|s| s.len() != first.len()) {
        return None;
    }
    let mut key = SecretBytes::from_slice(first.expose());
    for s in &shares[1..] {
        xor_into(&mut key, s);
    }
    Some(key)
}

fn xor_into(acc: &mut SecretBytes, s: &SecretBytes) {
    for (a, b) in acc.expose_mut().iter_mut().zip(s.expose()) {
        *a ^= b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_join_to_the_key_and_no_proper_subset_does() {
        let mut key = SecretBytes::zeroed(64);
        getrandom::fill(key.expose_mut()).unwrap();
        for n in 1..=4 {
            let shares = split(&key, n).unwrap();
            assert_eq!(shares.len(), n);
            assert!(join(&shares).unwrap().ct_eq(&key));
            if n > 1 {
                for left_out in 0..n {
                    let some: Vec<SecretBytes> = shares
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| *i != left_out)
                        .map(|(_, s)| SecretBytes::from_slice(s.expose()))
                        .collect();
                    assert!(
                        !join(&some).unwrap().ct_eq(&key),
                        "{n} shares, {left_out} left out"
                    );
                }
                // Each share alone is not the key (it is uniform).
                assert!(shares.iter().all(|s| !s.ct_eq(&key)));
            }
        }
        assert!(join(&[]).is_none());
        assert!(join(&[SecretBytes::zeroed(2), SecretBytes::zeroed(3)]).is_none());
    }
}
