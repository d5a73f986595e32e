//! What the proxy keeps per user: a SCRAM verifier and, when it can, an MD5 hash. Plain
//! passwords from the config are turned into these once at start.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

const ITERATIONS: u32 = 4096;

use crate::config::ConfiguredPassword;
pub use crate::config::{ScramVerifier, SecretError};

/// A user's secret in the forms the auth methods need.
#[derive(Clone)]
pub struct Secret {
    pub scram: Option<ScramVerifier>,
    /// `md5(password || user)` as 32 hex digits, as PostgreSQL stores it.
    pub md5: Option<String>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

pub(crate) fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().into()
}

/// PBKDF2-HMAC-SHA-256 with one output block: SCRAM's `Hi()`.
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut first = salt.to_vec();
    first.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac(password, &first);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &u);
        for (o, x) in out.iter_mut().zip(u.iter()) {
            *o ^= x;
        }
    }
    out
}

impl ScramVerifier {
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> Self {
        let salted = hi(password.as_bytes(), salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        ScramVerifier {
            iterations,
            salt: salt.to_vec(),
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac(&salted, b"Server Key"),
        }
    }
}

impl Secret {
    /// Builds the secret for `user` from a configured password or verifier.
    pub fn parse(user: &str, configured: &str) -> Result<Self, SecretError> {
        let plain = match ConfiguredPassword::parse(configured)? {
            ConfiguredPassword::Verifier(v) => {
                return Ok(Secret {
                    scram: Some(v),
                    md5: None,
                })
            }
            ConfiguredPassword::Md5(hex) => {
                return Ok(Secret {
                    scram: None,
                    md5: Some(hex),
                })
            }
            ConfiguredPassword::Plain(p) => p,
        };
        let salt: [u8; 16] = rand::random();
        Ok(Secret {
            scram: Some(ScramVerifier::from_password(plain, &salt, ITERATIONS)),
            md5: Some(super::md5_hex(&[plain.as_bytes(), user.as_bytes()])),
        })
    }

    /// A stand-in for a user that does not exist, so the exchange looks the same and the
    /// client learns nothing about which users exist (as PostgreSQL does).
    pub fn mock(user: &str, nonce_secret: &[u8]) -> Self {
        let salt = hmac(nonce_secret, user.as_bytes());
        let keys = hmac(nonce_secret, &salt);
        Secret {
            scram: Some(ScramVerifier {
                iterations: ITERATIONS,
                salt: salt[..16].to_vec(),
                stored_key: keys,
                server_key: keys,
            }),
            md5: Some(super::md5_hex(&[&keys])),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine;

    #[test]
    fn verifier_round_trip_and_rejects() {
        let v = ScramVerifier::from_password("pw", b"0123456789abcdef", 4096);
        let text = format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            v.iterations,
            B64.encode(&v.salt),
            B64.encode(v.stored_key),
            B64.encode(v.server_key)
        );
        assert!(ScramVerifier::parse(&text).expect("parses") == v);
        assert_eq!(
            ScramVerifier::parse("SCRAM-SHA-256$x"),
            Err(SecretError::BadVerifier)
        );
        assert!(matches!(Secret::parse("u", ""), Err(SecretError::Empty)));
    }

    #[test]
    fn md5_secret_matches_postgres_format() {
        // PostgreSQL stores md5(password || user): md5("secretalice").
        let s = Secret::parse("alice", "secret").expect("plain password");
        assert_eq!(s.md5, Some(crate::auth::md5_hex(&[b"secret", b"alice"])));
        let h = Secret::parse("alice", "md5ABCDEF0123456789abcdef0123456789").expect("md5 hash");
        assert_eq!(h.md5.as_deref(), Some("abcdef0123456789abcdef0123456789"));
        assert!(h.scram.is_none());
    }
}
