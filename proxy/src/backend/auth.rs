//! Answering a database's authentication request with the credentials from its URL.

use super::{BackendError, Role};
use crate::protocol::backend::Authentication;
use crate::protocol::buf_public::tagged;
use bytes::BytesMut;
use postgres_protocol::authentication::sasl::ScramSha256;
use switchyard_core::tls_stream::Binding;

/// Where an authentication exchange with a server stands.
pub(super) enum AuthState {
    Start,
    Scram {
        scram: Box<ScramSha256>,
        /// SCRAM-SHA-256-PLUS: bound to this TLS connection.
        bound: bool,
    },
    /// The server proved it knows the password over a bound exchange.
    Bound,
}

/// Produces the reply (if any) to one Authentication message.
pub(super) fn respond(
    role: Role,
    state: &mut AuthState,
    req: Authentication,
    user: &str,
    password: Option<&str>,
    binding: &Binding,
    out: &mut BytesMut,
) -> Result<(), BackendError> {
    let need_pw = || {
        password.ok_or_else(|| BackendError::Auth {
            role,
            detail: "the server wants a password but the URL has none".into(),
        })
    };
    match req {
        Authentication::Ok => {}
        Authentication::CleartextPassword => {
            let pw = need_pw()?;
            tagged(out, b'p', |w| {
                w.extend_from_slice(pw.as_bytes());
                w.extend_from_slice(&[0]);
            });
        }
        Authentication::Md5Password { salt } => {
            let pw = need_pw()?;
            let hash =
                postgres_protocol::authentication::md5_hash(user.as_bytes(), pw.as_bytes(), salt);
            tagged(out, b'p', |w| {
                w.extend_from_slice(hash.as_bytes());
                w.extend_from_slice(&[0]);
            });
        }
        Authentication::Sasl { mechanisms } => {
            let (mechanism, cb) = binding
                .choose(&mechanisms)
                .map_err(|e| BackendError::Auth {
                    role,
                    detail: e.to_string(),
                })?;
            let pw = need_pw()?;
            let scram = ScramSha256::new(pw.as_bytes(), cb);
            let first = scram.message().to_vec();
            tagged(out, b'p', |w| {
                w.extend_from_slice(mechanism.as_bytes());
                w.extend_from_slice(&[0]);
                w.extend_from_slice(&(first.len() as i32).to_be_bytes());
                w.extend_from_slice(&first);
            });
            *state = AuthState::Scram {
                scram: Box::new(scram),
                bound: mechanism.ends_with("-PLUS"),
            };
        }
        Authentication::SaslContinue(data) => {
            let AuthState::Scram { scram, .. } = state else {
                return Err(BackendError::Auth {
                    role,
                    detail: "unexpected SASL continue".into(),
                });
            };
            scram.update(&data).map_err(|e| BackendError::Auth {
                role,
                detail: e.to_string(),
            })?;
            let msg = scram.message().to_vec();
            tagged(out, b'p', |w| w.extend_from_slice(&msg));
        }
        Authentication::SaslFinal(data) => {
            let AuthState::Scram { scram, bound } = state else {
                return Err(BackendError::Auth {
                    role,
                    detail: "unexpected SASL final".into(),
                });
            };
            scram.finish(&data).map_err(|e| BackendError::Auth {
                role,
                detail: format!("server signature check failed: {e}"),
            })?;
            if *bound {
                *state = AuthState::Bound;
            }
        }
        Authentication::Unsupported(code) => {
            return Err(BackendError::UnsupportedAuth { role, code })
        }
    }
    Ok(())
}
