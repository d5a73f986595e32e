//! The server side of SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL speaks it: no
//! channel binding offered, username taken from the startup packet.

use super::secret::{hmac, ScramVerifier};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("client asked for channel binding, which was not offered")]
    ChannelBinding,
    #[error("SCRAM nonce mismatch")]
    Nonce,
    #[error("password does not match")]
    WrongPassword,
}

/// One exchange: `first` answers the client-first-message, `finish` checks the proof and
/// returns the server-final-message.
pub struct ScramServer {
    verifier: ScramVerifier,
    client_first_bare: String,
    server_first: String,
    nonce: String,
    gs2_header: String,
}

impl ScramServer {
    /// Handles the client-first-message; returns the exchange and the server-first-message.
    pub fn first(
        verifier: ScramVerifier,
        client_first: &[u8],
    ) -> Result<(Self, String), ScramError> {
        let msg =
            std::str::from_utf8(client_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        // gs2-header: "n,," (no binding), "y,," (client could, server did not offer),
        // "p=..." (binding demanded: refuse, we offered none).
        let (flag, rest) = msg
            .split_once(',')
            .ok_or(ScramError::Malformed("no gs2 header"))?;
        match flag {
            "n" | "y" => {}
            f if f.starts_with("p=") => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Malformed("bad gs2 flag")),
        }
        let (_authzid, bare) = rest
            .split_once(',')
            .ok_or(ScramError::Malformed("no gs2 header"))?;
        let gs2_header = format!("{flag},{_authzid},");
        let client_nonce = bare
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .ok_or(ScramError::Malformed("no client nonce"))?;
        if client_nonce.is_empty()
            || !client_nonce
                .bytes()
                .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
        {
            return Err(ScramError::Malformed("bad client nonce"));
        }
        let server_nonce: [u8; 18] = rand::random();
        let nonce = format!("{client_nonce}{}", B64.encode(server_nonce));
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&verifier.salt),
            verifier.iterations
        );
        Ok((
            ScramServer {
                verifier,
                client_first_bare: bare.to_string(),
                server_first: server_first.clone(),
                nonce,
                gs2_header,
            },
            server_first,
        ))
    }

    /// Checks the client-final-message; returns the server-final-message (`v=...`).
    pub fn finish(self, client_final: &[u8]) -> Result<String, ScramError> {
        let msg =
            std::str::from_utf8(client_final).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = msg
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        let mut binding = None;
        let mut nonce = None;
        for attr in without_proof.split(',') {
            if let Some(c) = attr.strip_prefix("c=") {
                binding = Some(c);
            } else if let Some(r) = attr.strip_prefix("r=") {
                nonce = Some(r);
            }
        }
        let binding = binding.ok_or(ScramError::Malformed("no channel binding attribute"))?;
        if B64.decode(binding).ok().as_deref() != Some(self.gs2_header.as_bytes()) {
            return Err(ScramError::Malformed(
                "channel binding does not match gs2 header",
            ));
        }
        if nonce != Some(self.nonce.as_str()) {
            return Err(ScramError::Nonce);
        }
        let proof = B64
            .decode(proof)
            .map_err(|_| ScramError::Malformed("proof not base64"))?;
        if proof.len() != 32 {
            return Err(ScramError::Malformed("proof length"));
        }
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let client_signature = hmac(&self.verifier.stored_key, auth_message.as_bytes());
        let mut client_key = [0u8; 32];
        for i in 0..32 {
            client_key[i] = proof[i] ^ client_signature[i];
        }
        let computed: [u8; 32] = Sha256::digest(client_key).into();
        let diff = computed
            .iter()
            .zip(self.verifier.stored_key.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            return Err(ScramError::WrongPassword);
        }
        let server_signature = hmac(&self.verifier.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    fn exchange(server_pw: &str, client_pw: &str) -> Result<(), ScramError> {
        let verifier = ScramVerifier::from_password(server_pw, b"saltsaltsaltsalt", 4096);
        let mut client = ScramSha256::new(client_pw.as_bytes(), ChannelBinding::unsupported());
        let (server, first) = ScramServer::first(verifier, client.message())?;
        client
            .update(first.as_bytes())
            .expect("client accepts server-first");
        let last = server.finish(client.message())?;
        client
            .finish(last.as_bytes())
            .expect("client verifies server signature");
        Ok(())
    }

    #[test]
    fn real_client_authenticates() {
        assert_eq!(exchange("pw", "pw"), Ok(()));
    }

    #[test]
    fn wrong_password_is_refused() {
        assert_eq!(exchange("pw", "nope"), Err(ScramError::WrongPassword));
    }

    #[test]
    fn garbage_is_malformed() {
        let v = ScramVerifier::from_password("pw", b"s", 1);
        assert!(ScramServer::first(v.clone(), b"garbage").is_err());
        assert_eq!(
            ScramServer::first(v, b"p=tls-server-end-point,,n=,r=abc").err(),
            Some(ScramError::ChannelBinding)
        );
    }
}
