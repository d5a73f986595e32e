//! MD5 password authentication (PostgreSQL's `md5` method).

use md5::{Digest, Md5};

/// Lowercase hex MD5 of the concatenated parts.
pub fn md5_hex(parts: &[&[u8]]) -> String {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    let d = h.finalize();
    let mut s = String::with_capacity(32);
    for b in d {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Checks a client's `md5<hex>` answer against the stored `md5(password || user)` hash.
pub fn md5_challenge_response_matches(stored_hex: &str, salt: [u8; 4], response: &str) -> bool {
    let expected = format!("md5{}", md5_hex(&[stored_hex.as_bytes(), &salt]));
    // Constant-time compare: the response is attacker-controlled.
    expected.len() == response.len()
        && expected
            .bytes()
            .zip(response.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_postgres_protocol_client() {
        let salt = [1, 2, 3, 4];
        let client = postgres_protocol::authentication::md5_hash(b"alice", b"secret", salt);
        let stored = md5_hex(&[b"secret", b"alice"]);
        assert!(md5_challenge_response_matches(&stored, salt, &client));
        let wrong = postgres_protocol::authentication::md5_hash(b"alice", b"wrong", salt);
        assert!(!md5_challenge_response_matches(&stored, salt, &wrong));
    }
}
