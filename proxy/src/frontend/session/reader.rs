//! A session's connection to new for the reads the cutover routes there. Opened on the
//! first such read with the client's startup parameters, read-only by default (a write
//! that slipped past the classifier fails there instead of landing on new alone), and
//! given the session's settings (search_path, TimeZone, DateStyle...) before each read
//! whenever they changed.

use crate::backend::{connect, Db};
use crate::protocol::backend::BackendMessage;
use crate::protocol::frontend::FrontendMessage;
use crate::protocol::Frame;
use crate::shared::Shared;
use bytes::BytesMut;
use std::collections::HashMap;
use std::sync::Arc;
use switchyard_core::tls_stream::write_flushed;
use switchyard_core::tls_stream::DbStream;
use tokio::io::AsyncWriteExt;

pub(crate) struct Reader {
    stream: DbStream,
    buf: BytesMut,
    /// The settings last replayed here.
    applied: Arc<[String]>,
    max: usize,
    /// Named statements prepared here, by a hash of the Parse message that made them.
    pub(crate) prepared: HashMap<String, u64>,
    /// Where a client's CancelRequest goes while this connection answers it.
    pub(crate) cancel: Option<crate::cancel::CancelTarget>,
}

/// Identifies a Parse message (name, text and parameter types).
pub(crate) fn parse_hash(raw: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(raw)
}

impl Reader {
    pub(crate) async fn open(
        shared: &Shared,
        startup: &[(String, String)],
    ) -> Result<Reader, String> {
        let mut params: Vec<(String, String)> = startup
            .iter()
            .filter(|(k, _)| k != "switchyard.session" && k != "default_transaction_read_only")
            .cloned()
            .collect();
        params.push(("default_transaction_read_only".into(), "on".into()));
        let b = connect(Db::New, &shared.new, &params, &shared.connect_options())
            .await
            .map_err(|e| e.to_string())?;
        Ok(Reader {
            cancel: Some(crate::cancel::CancelTarget {
                to: b.cancel_to.clone(),
                pid: b.pid,
                key: b.key.clone(),
            }),
            stream: b.stream,
            buf: b.read_buf,
            applied: Arc::from(Vec::new()),
            max: shared.config.max_message_size,
            prepared: HashMap::new(),
        })
    }

    /// Wraps a connection the session is about to make its primary, to bring its settings
    /// and prepared statements level with the one it replaces.
    pub(crate) fn from_conn(stream: DbStream, buf: BytesMut, max: usize) -> Reader {
        Reader {
            stream,
            buf,
            applied: Arc::from(Vec::new()),
            max,
            prepared: HashMap::new(),
            cancel: None,
        }
    }

    pub(crate) fn into_parts(self) -> (DbStream, BytesMut) {
        (self.stream, self.buf)
    }

    /// Brings the connection's settings to `settings` (statements replayed in order after
    /// a RESET ALL, which returns to the startup values).
    pub(crate) async fn apply(&mut self, settings: &Arc<[String]>) -> Result<(), String> {
        if Arc::ptr_eq(&self.applied, settings) || *self.applied == **settings {
            return Ok(());
        }
        let mut sql = String::from("RESET ALL");
        for s in settings.iter() {
            sql.push_str("; ");
            sql.push_str(s);
        }
        self.send_query(&sql).await?;
        match self.read_to_ready().await? {
            Some(e) => Err(format!("replaying the session's settings on new: {e}")),
            None => {
                self.applied = settings.clone();
                Ok(())
            }
        }
    }

    /// Reads through the next ReadyForQuery; the first error on the way, if any.
    async fn read_to_ready(&mut self) -> Result<Option<String>, String> {
        let mut error = None;
        loop {
            let f = self.frame().await?;
            match f.tag() {
                b'E' => {
                    if let Ok(BackendMessage::ErrorResponse(e)) = BackendMessage::decode(&f) {
                        error.get_or_insert(format!("{}: {}", e.code(), e.message()));
                    }
                }
                b'Z' => return Ok(error),
                _ => {}
            }
        }
    }

    pub(crate) async fn send_query(&mut self, sql: &str) -> Result<(), String> {
        let mut b = BytesMut::new();
        FrontendMessage::Query(sql.to_string()).encode(&mut b);
        self.send(&b).await
    }

    pub(crate) async fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        write_flushed(&mut self.stream, bytes)
            .await
            .map_err(|e| format!("writing to new: {e}"))
    }

    pub(crate) async fn frame(&mut self) -> Result<Frame, String> {
        use crate::backend::read::{next_frame, ReadError};
        next_frame(&mut self.stream, &mut self.buf, self.max)
            .await
            .map_err(|e| match e {
                ReadError::Protocol(e) => e.to_string(),
                ReadError::Io(e) => format!("reading from new: {e}"),
                ReadError::Closed => "new closed the connection".into(),
            })
    }

    /// Runs `messages` (the proxy's own Parse/Close) and a Sync; an error if any failed.
    /// Runs each statement as its own Query (one failing leaves the others in place), all
    /// sent at once; the errors, each with its statement.
    pub(crate) async fn run_each(&mut self, statements: &[String]) -> Result<Vec<String>, String> {
        if statements.is_empty() {
            return Ok(Vec::new());
        }
        let mut b = BytesMut::new();
        for s in statements {
            crate::protocol::buf_public::tagged(&mut b, b'Q', |b| {
                b.extend_from_slice(s.as_bytes());
                b.extend_from_slice(&[0]);
            });
        }
        self.send(&b).await?;
        let mut errors = Vec::new();
        for s in statements {
            if let Some(e) = self.read_to_ready().await? {
                errors.push(format!("{s}: {e}"));
            }
        }
        Ok(errors)
    }

    pub(crate) async fn run_own(&mut self, messages: &[u8]) -> Result<(), String> {
        let mut b = BytesMut::from(messages);
        b.extend_from_slice(b"S\0\0\0\x04");
        self.send(&b).await?;
        match self.read_to_ready().await? {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    pub(crate) async fn close(mut self) {
        let _ = self.stream.write_all(b"X\0\0\0\x04").await;
    }
}
