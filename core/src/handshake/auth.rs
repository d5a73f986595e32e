//! Answering a server's authentication requests: cleartext password, MD5, and SCRAM-SHA-256
//! (bound to the TLS connection as `channel_binding` and the server allow).

use super::error::HandshakeError;
use super::message::AuthRequest;
use crate::tls_stream::Binding;
use bytes::BytesMut;
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::frontend;

/// Where the exchange stands.
enum Scram {
    NotStarted,
    Running {
        exchange: Box<sasl::ScramSha256>,
        /// SCRAM-SHA-256-PLUS: the exchange is bound to this TLS connection.
        plus: bool,
    },
}

/// One session's side of the authentication exchange.
pub(super) struct Authenticator<'a> {
    user: &'a str,
    password: Option<&'a [u8]>,
    binding: &'a Binding,
    scram: Scram,
    /// The server proved over a bound SCRAM exchange that it knows the password, which
    /// `channel_binding=require` insists on.
    bound: bool,
}

impl<'a> Authenticator<'a> {
    pub(super) fn new(user: &'a str, password: Option<&'a [u8]>, binding: &'a Binding) -> Self {
        Authenticator {
            user,
            password,
            binding,
            scram: Scram::NotStarted,
            bound: false,
        }
    }

    /// Writes the answer to `req`, if it wants one, to `out`.
    pub(super) fn respond(
        &mut self,
        req: AuthRequest,
        out: &mut BytesMut,
    ) -> Result<(), HandshakeError> {
        match req {
            AuthRequest::Ok => {}
            AuthRequest::Cleartext => {
                frontend::password_message(self.password()?, out).map_err(HandshakeError::Io)?;
            }
            AuthRequest::Md5 { salt } => {
                let hash = md5_hash(self.user.as_bytes(), self.password()?, salt);
                frontend::password_message(hash.as_bytes(), out).map_err(HandshakeError::Io)?;
            }
            AuthRequest::Sasl { mechanisms } => {
                let (mechanism, cb) = self.binding.choose(&mechanisms)?;
                let exchange = sasl::ScramSha256::new(self.password()?, cb);
                frontend::sasl_initial_response(mechanism, exchange.message(), out)
                    .map_err(HandshakeError::Io)?;
                self.scram = Scram::Running {
                    exchange: Box::new(exchange),
                    plus: mechanism == sasl::SCRAM_SHA_256_PLUS,
                };
            }
            AuthRequest::SaslContinue(data) => {
                let Scram::Running { exchange, .. } = &mut self.scram else {
                    return Err(HandshakeError::Protocol(
                        "SASL continue before start".into(),
                    ));
                };
                exchange
                    .update(&data)
                    .map_err(|source| HandshakeError::Scram {
                        stage: "first message",
                        source,
                    })?;
                frontend::sasl_response(exchange.message(), out).map_err(HandshakeError::Io)?;
            }
            AuthRequest::SaslFinal(data) => {
                let Scram::Running { exchange, plus } = &mut self.scram else {
                    return Err(HandshakeError::Protocol("SASL final before start".into()));
                };
                exchange
                    .finish(&data)
                    .map_err(|source| HandshakeError::Scram {
                        stage: "signature",
                        source,
                    })?;
                self.bound = *plus;
            }
            AuthRequest::Unsupported(code) => return Err(HandshakeError::UnsupportedAuth { code }),
        }
        Ok(())
    }

    /// Refuses a session that `channel_binding=require` would not have allowed.
    pub(super) fn check_done(&self) -> Result<(), HandshakeError> {
        Ok(self.binding.check_done(self.bound)?)
    }

    fn password(&self) -> Result<&'a [u8], HandshakeError> {
        self.password.ok_or(HandshakeError::NoPassword)
    }
}
