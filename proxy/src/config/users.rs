//! `auth_method` and the `[[users]]` list: who may connect to the proxy, and the forms a
//! configured password may take. Decoding those forms lives here, so that a bad one is
//! reported at load time; `auth` turns them into the keys it checks clients against.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::Deserialize;

/// How clients prove who they are to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMethod {
    /// No password; only for local demos. Used automatically when no users are configured,
    /// and then only loopback clients are accepted.
    Trust,
    Md5,
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
}

/// A client user of the proxy. The proxy reaches the databases with the credentials in the
/// `old` and `new` URLs, whoever the client is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// Plain text, or a PostgreSQL SCRAM verifier (`SCRAM-SHA-256$4096:salt$stored:server`),
    /// or an MD5 hash (`md5` + 32 hex digits, md5 auth only).
    pub password: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("password must not be empty")]
    Empty,
    #[error("malformed SCRAM-SHA-256 verifier (expected SCRAM-SHA-256$<iterations>:<salt>$<storedkey>:<serverkey>)")]
    BadVerifier,
}

/// The keys SCRAM needs, never the password itself: PostgreSQL's
/// `SCRAM-SHA-256$iter:salt$stored:server`, decoded (`auth` derives them from a plain
/// password too).
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramVerifier(***)")
    }
}

/// What a configured `password` holds.
pub enum ConfiguredPassword<'a> {
    Verifier(ScramVerifier),
    /// `md5(password || user)` as 32 lowercase hex digits.
    Md5(String),
    Plain(&'a str),
}

impl ScramVerifier {
    /// Parses PostgreSQL's `SCRAM-SHA-256$iter:salt$stored:server` form.
    pub fn parse(s: &str) -> Result<Self, SecretError> {
        let rest = s
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or(SecretError::BadVerifier)?;
        let (iter_salt, keys) = rest.split_once('$').ok_or(SecretError::BadVerifier)?;
        let (iter, salt) = iter_salt.split_once(':').ok_or(SecretError::BadVerifier)?;
        let (stored, server) = keys.split_once(':').ok_or(SecretError::BadVerifier)?;
        let key = |k: &str| -> Result<[u8; 32], SecretError> {
            B64.decode(k)
                .ok()
                .and_then(|v| <[u8; 32]>::try_from(v).ok())
                .ok_or(SecretError::BadVerifier)
        };
        Ok(ScramVerifier {
            iterations: iter.parse().map_err(|_| SecretError::BadVerifier)?,
            salt: B64.decode(salt).map_err(|_| SecretError::BadVerifier)?,
            stored_key: key(stored)?,
            server_key: key(server)?,
        })
    }
}

impl<'a> ConfiguredPassword<'a> {
    pub fn parse(configured: &'a str) -> Result<Self, SecretError> {
        if configured.is_empty() {
            return Err(SecretError::Empty);
        }
        if configured.starts_with("SCRAM-SHA-256$") {
            return ScramVerifier::parse(configured).map(ConfiguredPassword::Verifier);
        }
        if configured.len() == 35
            && configured.starts_with("md5")
            && configured[3..].bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Ok(ConfiguredPassword::Md5(
                configured[3..].to_ascii_lowercase(),
            ));
        }
        Ok(ConfiguredPassword::Plain(configured))
    }
}

/// Every bad value among the users, as (key, message); `auth_method` decides which
/// password forms can answer.
pub fn problems(users: &[UserConfig], auth_method: AuthMethod) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if !users.is_empty() && auth_method == AuthMethod::Trust {
        out.push((
            "auth_method".into(),
            "trust cannot be combined with configured users".into(),
        ));
    }
    for (i, u) in users.iter().enumerate() {
        if u.name.is_empty() {
            out.push((format!("users[{i}].name"), "must not be empty".into()));
        }
        if let Err(e) = ConfiguredPassword::parse(&u.password) {
            out.push((format!("users[{i}].password"), e.to_string()));
        } else if auth_method == AuthMethod::Md5 && u.password.starts_with("SCRAM-SHA-256$") {
            out.push((
                format!("users[{i}].password"),
                "a SCRAM verifier cannot answer md5 authentication; give the password or an md5 hash".into(),
            ));
        } else if auth_method == AuthMethod::ScramSha256
            && u.password.starts_with("md5")
            && u.password.len() == 35
        {
            out.push((
                format!("users[{i}].password"),
                "an md5 hash cannot answer scram-sha-256 authentication; give the password or a SCRAM verifier".into(),
            ));
        }
    }
    out
}
