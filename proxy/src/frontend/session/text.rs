//! The session's client encoding, for the text the proxy itself reads and writes on the
//! client's connections: statements it classifies or splits, statements of its own it
//! sends in the session, captured rows it reads back. Everything else passes as bytes.
//!
//! The server converts between the client encoding and the database's; the proxy only
//! needs a faithful round trip between the client's bytes and Rust strings, which
//! `encoding_rs` gives for the encodings below. PostgreSQL's LATIN1 is read as
//! windows-1252 (bytes 0x80–0x9F become other characters than PostgreSQL's, but every byte
//! maps to one character and back, so a statement split or quoted by the proxy reaches
//! the server byte for byte).

use encoding_rs::Encoding;
use std::borrow::Cow;
use std::sync::atomic::{AtomicU8, Ordering};

/// PostgreSQL's client encoding names (as the server reports them) and the encoding that
/// reads their bytes. Index 0 is text the proxy can take as UTF-8 as it is.
static ENCODINGS: &[(&str, &Encoding)] = &[
    ("UTF8", encoding_rs::UTF_8),
    ("LATIN1", encoding_rs::WINDOWS_1252),
    ("WIN1252", encoding_rs::WINDOWS_1252),
    ("LATIN2", encoding_rs::ISO_8859_2),
    ("LATIN3", encoding_rs::ISO_8859_3),
    ("LATIN4", encoding_rs::ISO_8859_4),
    ("LATIN5", encoding_rs::WINDOWS_1254),
    ("LATIN6", encoding_rs::ISO_8859_10),
    ("LATIN7", encoding_rs::ISO_8859_13),
    ("LATIN8", encoding_rs::ISO_8859_14),
    ("LATIN9", encoding_rs::ISO_8859_15),
    ("LATIN10", encoding_rs::ISO_8859_16),
    ("ISO_8859_5", encoding_rs::ISO_8859_5),
    ("ISO_8859_6", encoding_rs::ISO_8859_6),
    ("ISO_8859_7", encoding_rs::ISO_8859_7),
    ("ISO_8859_8", encoding_rs::ISO_8859_8),
    ("WIN1250", encoding_rs::WINDOWS_1250),
    ("WIN1251", encoding_rs::WINDOWS_1251),
    ("WIN1253", encoding_rs::WINDOWS_1253),
    ("WIN1254", encoding_rs::WINDOWS_1254),
    ("WIN1255", encoding_rs::WINDOWS_1255),
    ("WIN1256", encoding_rs::WINDOWS_1256),
    ("WIN1257", encoding_rs::WINDOWS_1257),
    ("WIN1258", encoding_rs::WINDOWS_1258),
    ("WIN866", encoding_rs::IBM866),
    ("WIN874", encoding_rs::WINDOWS_874),
    ("KOI8R", encoding_rs::KOI8_R),
    ("KOI8U", encoding_rs::KOI8_U),
    ("EUC_JP", encoding_rs::EUC_JP),
    ("SJIS", encoding_rs::SHIFT_JIS),
    ("EUC_KR", encoding_rs::EUC_KR),
    ("UHC", encoding_rs::EUC_KR),
    ("BIG5", encoding_rs::BIG5),
    ("GBK", encoding_rs::GBK),
    ("EUC_CN", encoding_rs::GBK),
    ("GB18030", encoding_rs::GB18030),
];

/// The encoding a session's text is in now; changes when the server reports a new
/// `client_encoding`.
#[derive(Debug, Default)]
pub struct ClientText(AtomicU8);

/// Bytes that are not text in the session's encoding (the server would refuse them too).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid byte sequence for encoding \"{0}\"")]
pub struct Malformed(pub &'static str);

impl ClientText {
    /// For `client_encoding` as the server reports it, over a database in UTF8 or not; None
    /// when the proxy cannot read that encoding (MULE_INTERNAL, EUC_TW, JOHAB, ... and
    /// SQL_ASCII over a database that is not UTF8, whose bytes could be anything).
    pub fn index_of(client_encoding: &str, server_utf8: bool) -> Option<u8> {
        // SQL_ASCII converts nothing: over a UTF8 database the bytes are UTF-8, which the
        // server checks on the way in.
        if client_encoding.eq_ignore_ascii_case("SQL_ASCII") {
            return server_utf8.then_some(0);
        }
        let name = if client_encoding.eq_ignore_ascii_case("UTF-8") {
            "UTF8"
        } else {
            client_encoding
        };
        ENCODINGS
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|i| u8::try_from(i).ok())
    }

    pub fn new(index: u8) -> ClientText {
        ClientText(AtomicU8::new(index))
    }

    pub fn set(&self, index: u8) {
        self.0.store(index, Ordering::Relaxed);
    }

    fn entry(&self) -> (&'static str, &'static Encoding) {
        ENCODINGS
            .get(usize::from(self.0.load(Ordering::Relaxed)))
            .copied()
            .unwrap_or(ENCODINGS[0])
    }

    /// The session's text is UTF-8 as it is on the wire.
    pub fn is_utf8(&self) -> bool {
        self.0.load(Ordering::Relaxed) == 0
    }

    /// `bytes` (from the client, or from the server in the client's encoding) as a string.
    pub fn decode<'b>(&self, bytes: &'b [u8]) -> Result<Cow<'b, str>, Malformed> {
        let (name, encoding) = self.entry();
        encoding
            .decode_without_bom_handling_and_without_replacement(bytes)
            .ok_or(Malformed(name))
    }

    /// The same, with anything unreadable replaced (for text only shown or compared).
    pub fn decode_lossy<'b>(&self, bytes: &'b [u8]) -> Cow<'b, str> {
        self.entry().1.decode_without_bom_handling(bytes).0
    }

    /// `text` in the session's encoding, for the server to read. Characters the encoding
    /// cannot hold become numeric character references, which the server would reject:
    /// text the proxy writes into a session is its own ASCII or text read from the session.
    pub fn encode<'t>(&self, text: &'t str) -> Cow<'t, [u8]> {
        let (_, encoding) = self.entry();
        if encoding == encoding_rs::UTF_8 {
            return Cow::Borrowed(text.as_bytes());
        }
        encoding.encode(text).0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(name: &str) -> ClientText {
        ClientText::new(ClientText::index_of(name, true).expect(name))
    }

    #[test]
    fn every_single_byte_encoding_round_trips_every_byte() {
        for (name, encoding) in ENCODINGS {
            if encoding.is_single_byte() {
                let t = text(name);
                let all: Vec<u8> = (0u8..=255).filter(|&b| b != 0).collect();
                let Ok(s) = t.decode(&all) else {
                    // Some code pages leave bytes unassigned; the server refuses those too.
                    continue;
                };
                assert_eq!(&*t.encode(&s), &all[..], "{name}");
            }
        }
        let t = text("LATIN1");
        let all: Vec<u8> = (1u8..=255).collect();
        assert_eq!(&*t.encode(&t.decode(&all).unwrap()), &all[..]);
    }

    #[test]
    fn multibyte_text_round_trips_and_bad_bytes_are_refused() {
        let t = text("EUC_JP");
        let s = "INSERT INTO t VALUES ('日本語', 'ｶﾀｶﾅ')";
        let bytes = t.encode(s).into_owned();
        assert_ne!(&bytes[..], s.as_bytes());
        assert_eq!(t.decode(&bytes).unwrap(), s);
        assert_eq!(t.decode(b"\xa4"), Err(Malformed("EUC_JP")));
        let latin = text("latin1");
        assert_eq!(latin.decode(b"caf\xe9").unwrap(), "café");
        assert_eq!(&*latin.encode("café"), b"caf\xe9");
    }

    #[test]
    fn utf8_and_sql_ascii_pass_as_they_are() {
        assert!(text("UTF8").is_utf8());
        assert!(text("utf-8").is_utf8());
        assert!(text("SQL_ASCII").is_utf8());
        assert_eq!(ClientText::index_of("SQL_ASCII", false), None);
        assert_eq!(ClientText::index_of("MULE_INTERNAL", true), None);
        assert_eq!(ClientText::index_of("EUC_TW", true), None);
        let t = text("UTF8");
        assert!(matches!(t.encode("é"), Cow::Borrowed(_)));
        assert!(t.decode(b"\xff").is_err());
    }
}
