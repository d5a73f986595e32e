//! SQL text written for `standard_conforming_strings = off`, made to read the same under
//! either setting. With the setting off, a backslash in a plain literal escapes the next
//! character (`'it\'s'` is one string); pg_query, like a default server, reads it as a
//! literal backslash, so it would see other statements than the server runs. Each plain
//! (or `N''`) literal holding a backslash becomes the `E''` literal it means, which reads
//! the same with the setting on or off: the proxy parses, classifies, plans and mirrors
//! that text, while the client's own bytes still go to the primary as they came.

use super::normalize::{
    comment_end, dollar_quote_end, is_ident_cont, is_ident_start, line_comment_end, skip_literal,
    skip_quoted_ident,
};
use std::borrow::Cow;

/// `sql` as a server with `standard_conforming_strings = off` reads it, in a form that
/// reads the same with the setting on. Borrowed when nothing changes (no plain literal
/// holds a backslash, or the text has a literal or comment that never ends: the server
/// rejects that either way).
pub fn conforming(sql: &str) -> Cow<'_, str> {
    if !sql.contains('\\') {
        return Cow::Borrowed(sql);
    }
    match rewrite(sql) {
        Some(out) => Cow::Owned(out),
        None => Cow::Borrowed(sql),
    }
}

/// True when `sql` reads differently depending on `standard_conforming_strings`.
pub fn depends_on_conforming_strings(sql: &str) -> bool {
    matches!(conforming(sql), Cow::Owned(_))
}

/// The rewritten text, or `None` when nothing changes or the scan cannot follow the text.
fn rewrite(sql: &str) -> Option<String> {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len() + 8);
    // Copied up to here (0: nothing changed yet); every index below lands on an ASCII
    // byte, so slices of `sql` stay on character boundaries.
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'-' if b.get(i + 1) == Some(&b'-') => i = line_comment_end(b, i),
            b'/' if b.get(i + 1) == Some(&b'*') => i = comment_end(b, i)?,
            b'"' => i = skip_quoted_ident(b, i)?,
            b'$' => match dollar_quote_end(sql, i)? {
                Some(end) => i = end,
                None => i += 1,
            },
            // A space keeps the E from joining a word before it (`int4'1'`).
            b'\'' => i = escape_literal(sql, &mut out, &mut copied, i, " E", i)?,
            c if is_ident_start(c) => {
                let start = i;
                while i < b.len() && is_ident_cont(b[i]) {
                    i += 1;
                }
                let word = &sql[start..i];
                if b.get(i) == Some(&b'\'') {
                    if word.eq_ignore_ascii_case("e") {
                        i = skip_literal(b, i, true)?;
                    } else if word.eq_ignore_ascii_case("b") || word.eq_ignore_ascii_case("x") {
                        i = skip_literal(b, i, false)?;
                    } else if word.eq_ignore_ascii_case("n") {
                        // N'...' is the type nchar and a plain literal.
                        i = escape_literal(sql, &mut out, &mut copied, start, "NCHAR E", i)?;
                    }
                    // Any other word (a type name: int4'1') is followed by a plain
                    // literal, handled on the next turn.
                } else if word.eq_ignore_ascii_case("u")
                    && b.get(i) == Some(&b'&')
                    && b.get(i + 1) == Some(&b'\'')
                {
                    // U&'...' takes no backslash escapes when scanned (the server refuses
                    // it with the setting off anyway).
                    i = skip_literal(b, i + 1, false)?;
                }
            }
            _ => i += 1,
        }
    }
    if copied == 0 {
        return None;
    }
    out.push_str(&sql[copied..]);
    Some(out)
}

/// Reads the plain literal opening at `lit` as the setting off does; when it holds a
/// backslash, copies the text from `copied` to `from`, then `prefix` and the literal.
/// Returns where the literal ends.
fn escape_literal(
    sql: &str,
    out: &mut String,
    copied: &mut usize,
    from: usize,
    prefix: &str,
    lit: usize,
) -> Option<usize> {
    let end = skip_literal(sql.as_bytes(), lit, true)?;
    if sql[lit..end].contains('\\') {
        out.push_str(&sql[*copied..from]);
        out.push_str(prefix);
        out.push_str(&sql[lit..end]);
        *copied = end;
    }
    Some(end)
}

#[cfg(test)]
mod tests {
    use super::{conforming, depends_on_conforming_strings};

    fn conv(sql: &str) -> String {
        conforming(sql).into_owned()
    }

    #[test]
    fn plain_literals_with_backslashes_become_escape_literals() {
        assert_eq!(
            conv(r"UPDATE t SET v = 'it\'s' WHERE id = 1"),
            r"UPDATE t SET v =  E'it\'s' WHERE id = 1"
        );
        // What looks like a second statement is inside the string.
        assert_eq!(
            conv(r"SELECT 'x\'; DELETE FROM t; --'"),
            r"SELECT  E'x\'; DELETE FROM t; --'"
        );
        assert_eq!(conv(r"SELECT int4'1', 'a\\b'"), r"SELECT int4'1',  E'a\\b'");
        assert_eq!(conv(r"SELECT N'a\'b'"), r"SELECT NCHAR E'a\'b'");
        // A continued literal takes the escape form as a whole.
        assert_eq!(conv("SELECT 'a'\n'b\\'c'"), "SELECT  E'a'\n'b\\'c'");
    }

    #[test]
    fn text_that_reads_the_same_is_left_alone() {
        for sql in [
            "SELECT 1",
            r"SELECT E'it\'s'",
            r"SELECT $$ \' $$, $q$ a\b $q$",
            r#"SELECT "we\ird" FROM t"#,
            r"SELECT 1 -- it\'s",
            r"SELECT 1 /* it\'s /* \ */ */",
            r"SELECT B'101', X'1F'",
            r"SELECT U&'d\0061t\+000061'",
            "SELECT 'no backslash'",
            // Never ends: the server refuses it whatever the setting.
            r"SELECT 'abc\'",
        ] {
            assert!(
                matches!(conforming(sql), std::borrow::Cow::Borrowed(_)),
                "{sql}"
            );
            assert!(!depends_on_conforming_strings(sql), "{sql}");
        }
        assert!(depends_on_conforming_strings(r"SELECT 'a\b'"));
    }
}
