//! A literal-blind cache key for SQL text: string and numeric constants become `?`, comments
//! vanish, everything else stays. Statements that differ only in constants share a class and
//! a fingerprint, so the expensive parse runs once per shape rather than once per statement.

/// Returns the key, or `None` when the text holds something this scanner does not follow
/// (an unterminated literal or comment); callers then classify without caching.
pub fn literal_blind_key(sql: &str) -> Option<String> {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    // Byte offsets always land on ASCII boundaries here, so slicing `sql` stays on char
    // boundaries: every branch advances over whole UTF-8 sequences or ASCII bytes.
    while i < b.len() {
        let c = b[i];
        match c {
            b'-' if b.get(i + 1) == Some(&b'-') => i = line_comment_end(b, i),
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = comment_end(b, i)?;
                out.push(' ');
            }
            b'\'' => {
                i = skip_literal(b, i, false)?;
                out.push('?');
            }
            b'"' => {
                let end = skip_quoted_ident(b, i)?;
                out.push_str(&sql[i..end]);
                i = end;
            }
            b'$' => {
                if let Some(end) = dollar_quote_end(sql, i)? {
                    out.push('?');
                    i = end;
                } else {
                    // A parameter ($1) or a lone dollar: keep it.
                    let start = i;
                    i += 1;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                    out.push_str(&sql[start..i]);
                }
            }
            b'0'..=b'9' => {
                i = skip_number(b, i);
                out.push('?');
            }
            b'.' if b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                i = skip_number(b, i);
                out.push('?');
            }
            _ if is_ident_start(c) => {
                let start = i;
                while i < b.len() && is_ident_cont(b[i]) {
                    i += 1;
                }
                let word = &sql[start..i];
                // E'...' takes backslash escapes; B'', X'', N'', U&'' are plain literals.
                if b.get(i) == Some(&b'\'') {
                    let escapes = word.eq_ignore_ascii_case("e");
                    if escapes || ["b", "x", "n"].iter().any(|p| word.eq_ignore_ascii_case(p)) {
                        i = skip_literal(b, i, escapes)?;
                        out.push('?');
                        continue;
                    }
                }
                out.push_str(word);
            }
            _ => {
                // Copy one whole character (multi-byte UTF-8 included).
                let len = utf8_len(c);
                let end = (i + len).min(b.len());
                out.push_str(sql.get(i..end)?);
                i = end;
            }
        }
    }
    Some(out)
}

/// Index of the newline ending a `--` comment that opens at `i` (or the end of the text).
pub(super) fn line_comment_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && !matches!(b[i], b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// Index just past a (nested) block comment opening at `i`; `None` if it never closes.
pub(super) fn comment_end(b: &[u8], mut i: usize) -> Option<usize> {
    let mut depth = 1;
    i += 2;
    while depth > 0 {
        match (b.get(i)?, b.get(i + 1)) {
            (b'/', Some(b'*')) => {
                depth += 1;
                i += 2;
            }
            (b'*', Some(b'/')) => {
                depth -= 1;
                i += 2;
            }
            _ => i += 1,
        }
    }
    Some(i)
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xf0..=0xff => 4,
        0xe0..=0xef => 3,
        0xc0..=0xdf => 2,
        _ => 1,
    }
}

pub(super) fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

pub(super) fn is_ident_cont(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

/// Index just past the string literal whose opening quote is at `i`, continuations
/// included: PostgreSQL joins `'a'` and `'b'` separated by whitespace holding a newline
/// (and `--` comments) into one literal, read the same way (escapes or not) as its first
/// part. Scanning the parts apart would misplace where the literal ends.
pub(super) fn skip_literal(b: &[u8], i: usize, escapes: bool) -> Option<usize> {
    let mut end = skip_quoted(b, i, escapes)?;
    while let Some(next) = continuation(b, end) {
        end = skip_quoted(b, next, escapes)?;
    }
    Some(end)
}

/// Where a continuation of a literal ending at `i` opens, if one does: horizontal space
/// or comments, a newline, then any space or comments, then a quote (the scanner's
/// `quotecontinue`).
fn continuation(b: &[u8], mut i: usize) -> Option<usize> {
    let mut newline = false;
    loop {
        match b.get(i)? {
            b' ' | b'\t' | b'\x0c' => i += 1,
            b'\x0b' if newline => i += 1,
            b'\n' | b'\r' => {
                newline = true;
                i += 1;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => i = line_comment_end(b, i),
            b'\'' if newline => return Some(i),
            _ => return None,
        }
    }
}

/// Index just past a single-quoted literal starting at `i` ('' doubles a quote; with
/// `escapes`, a backslash escapes the next byte).
fn skip_quoted(b: &[u8], mut i: usize, escapes: bool) -> Option<usize> {
    i += 1;
    loop {
        match b.get(i)? {
            b'\\' if escapes => i += 2,
            b'\'' if b.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => return Some(i + 1),
            _ => i += 1,
        }
    }
}

pub(super) fn skip_quoted_ident(b: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    loop {
        match b.get(i)? {
            b'"' if b.get(i + 1) == Some(&b'"') => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
}

/// If a dollar-quoted string starts at `i`, the index just past it; `Some(None)` if this is
/// not a dollar quote; `None` if it is one but never closes.
pub(super) fn dollar_quote_end(sql: &str, i: usize) -> Option<Option<usize>> {
    let b = sql.as_bytes();
    let mut j = i + 1;
    if b.get(j).is_some_and(u8::is_ascii_digit) {
        return Some(None);
    }
    while j < b.len() && b[j] != b'$' {
        if !is_ident_cont(b[j]) || b[j] == b'$' {
            return Some(None);
        }
        j += 1;
    }
    if j >= b.len() {
        return Some(None);
    }
    let tag = &sql[i..=j];
    let body_start = j + 1;
    let close = sql.get(body_start..)?.find(tag)?;
    Some(Some(body_start + close + tag.len()))
}

fn skip_number(b: &[u8], mut i: usize) -> usize {
    while i < b.len() {
        let c = b[i];
        let exp_sign = (c == b'+' || c == b'-') && i > 0 && matches!(b[i - 1], b'e' | b'E');
        if c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || exp_sign {
            i += 1;
        } else {
            break;
        }
    }
    i
}

#[cfg(test)]
mod tests {
    use super::literal_blind_key as key;

    #[test]
    fn constants_vanish() {
        assert_eq!(
            key("SELECT abalance FROM pgbench_accounts WHERE aid = 4711;"),
            key("SELECT abalance FROM pgbench_accounts WHERE aid = 12;")
        );
        assert_eq!(
            key("select 'a''b', 1.5e-3, .5"),
            Some("select ?, ?, ?".into())
        );
        assert_eq!(
            key("select E'it\\'s', $x$ a ' b $x$"),
            Some("select ?, ?".into())
        );
    }

    #[test]
    fn structure_stays() {
        assert_ne!(key("SELECT 1"), key("UPDATE t SET a = 1"));
        assert_eq!(
            key("select \"t1\".a2 from t1 where x = $1"),
            Some("select \"t1\".a2 from t1 where x = $1".into())
        );
        assert_eq!(
            key("select 1 -- comment\n, 2 /* c /* nested */ */"),
            Some("select ? \n, ?  ".into())
        );
        assert_eq!(key("select 'héllo', ü"), Some("select ?, ü".into()));
    }

    #[test]
    fn continued_literals_are_one_literal() {
        // One E'' literal continued on the next line: a single string, not a DROP.
        assert_eq!(
            key("SELECT E'a'\n'b\\'; DROP TABLE t; --'"),
            Some("SELECT ?".into())
        );
        // Plain (no escapes): the literal ends at the quote after the backslash.
        assert_eq!(
            key("SELECT 'a'\n'b\\'; DROP TABLE t; --'"),
            Some("SELECT ?; DROP TABLE t; ".into())
        );
        assert_eq!(
            key("SELECT 'a' -- c\n  -- d\n 'b', 'c' 'd'"),
            key("SELECT 'x', 'c' 'd'")
        );
        // Without a newline two literals stay two.
        assert_eq!(key("SELECT 'a' 'b'"), Some("SELECT ? ?".into()));
    }

    #[test]
    fn unterminated_gives_none() {
        assert_eq!(key("select 'abc"), None);
        assert_eq!(key("select /* abc"), None);
        assert_eq!(key("select $q$ abc"), None);
    }
}
