//! A literal-blind cache key for SQL text: each constant becomes a placeholder naming the
//! token PostgreSQL's scanner makes of it, comments vanish, everything else stays.
//! Statements that differ only in constants share a class, so the expensive parse runs once
//! per shape rather than once per statement.
//!
//! Sharing a key must never share a wrong class: the grammar takes some constants only in
//! some places (`SET x = B'1'` does not parse, `SET x = 1` does; `FETCH 1.5` does not,
//! `FETCH 1` does), so the placeholders keep the token kind: an integer that fits in 32
//! bits, another number, a string, a bit string, a hex string, a national string. They are
//! control characters, which text outside literals cannot hold without being refused
//! (such text gets no key), so `?` the operator never meets `?` the constant.

/// Placeholders, one per kind of constant token.
const INTEGER: char = '\u{1}';
const NUMBER: char = '\u{2}';
const STRING: char = '\u{3}';
const BITS: char = '\u{4}';
const HEX: char = '\u{5}';
const NATIONAL: char = '\u{6}';

/// Returns the key, or `None` when the text holds something this scanner does not follow
/// (an unterminated literal or comment); callers then classify without caching.
pub fn literal_blind_key(sql: &str) -> Option<String> {
    let mut out = String::with_capacity(sql.len());
    literal_blind_key_into(sql, &mut out, usize::MAX)?;
    Some(out)
}

/// What a byte can start, for the scanner's dispatch.
const PLAIN: u8 = 0;
const IDENT: u8 = 1;
const DIGIT: u8 = 2;
const SPECIAL: u8 = 3;
const REFUSED: u8 = 4;

/// Every byte of a statement passes through here on every statement the proxy sees, so
/// the dispatch is one table lookup rather than a chain of comparisons.
static KIND: [u8; 256] = {
    let mut t = [PLAIN; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = if b.is_ascii_alphabetic() || b == b'_' || b >= 0x80 {
            IDENT
        } else if b.is_ascii_digit() {
            DIGIT
        } else if matches!(b, b'-' | b'/' | b'\'' | b'"' | b'$' | b'.') {
            SPECIAL
        } else if b < b' ' && !matches!(b, b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c') {
            REFUSED
        } else {
            PLAIN
        };
        c += 1;
    }
    t
};

/// Bytes that continue an identifier (or a keyword).
static IDENT_CONT: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        t[c] = matches!(KIND[c], IDENT | DIGIT) || c == b'$' as usize;
        c += 1;
    }
    t
};

/// Writes the key of `sql` into `out` (cleared first), copying unchanged runs whole.
/// `None` as for [`literal_blind_key`], or when the key would exceed `limit` bytes.
pub fn literal_blind_key_into(sql: &str, out: &mut String, limit: usize) -> Option<()> {
    out.clear();
    let b = sql.as_bytes();
    let mut i = 0;
    // Text from `copied` to `i` is still to be copied unchanged. Every place a run is cut
    // (a quote, a dash, a slash, a dollar, a digit, a literal's one-letter prefix) is an
    // ASCII byte, so the slices of `sql` stay on char boundaries.
    let mut copied = 0;
    let flush = |out: &mut String, from: usize, to: usize| -> Option<()> {
        out.push_str(sql.get(from..to)?);
        (out.len() <= limit).then_some(())
    };
    while i < b.len() {
        let c = b[i];
        match KIND[c as usize] {
            PLAIN => i += 1,
            REFUSED => return None,
            IDENT => {
                let start = i;
                i += 1;
                i += b[i..]
                    .iter()
                    .position(|&c| !IDENT_CONT[c as usize])
                    .unwrap_or(b.len() - i);
                let prefix = (i - start == 1).then(|| b[start].to_ascii_lowercase());
                // E'...' takes backslash escapes; B'', X'', N'' are plain literals.
                if prefix.is_some() && b.get(i) == Some(&b'\'') {
                    let prefix = prefix.unwrap_or_default();
                    if matches!(prefix, b'e' | b'b' | b'x' | b'n') {
                        flush(out, copied, start)?;
                        let end = skip_literal(b, i, prefix == b'e')?;
                        // Escapes can make the literal invalid (`\u00`, a byte sequence
                        // that is not UTF-8): then the parse fails for this text and not
                        // for its siblings, so such text gets no shared key.
                        if prefix == b'e' && b[i..end].contains(&b'\\') {
                            return None;
                        }
                        i = end;
                        out.push(match prefix {
                            b'b' => BITS,
                            b'x' => HEX,
                            b'n' => NATIONAL,
                            _ => STRING,
                        });
                        copied = i;
                    }
                }
                // U&'...' holds Unicode escapes that may be invalid, as above.
                if prefix == Some(b'u') && b.get(i..i + 2) == Some(b"&'") {
                    return None;
                }
            }
            DIGIT => {
                flush(out, copied, i)?;
                let (end, kind) = number_end(b, i)?;
                i = end;
                out.push(kind);
                copied = i;
            }
            _ => match c {
                b'-' if b.get(i + 1) == Some(&b'-') => {
                    flush(out, copied, i)?;
                    i = line_comment_end(b, i);
                    copied = i;
                }
                b'/' if b.get(i + 1) == Some(&b'*') => {
                    flush(out, copied, i)?;
                    i = comment_end(b, i)?;
                    out.push(' ');
                    copied = i;
                }
                b'\'' => {
                    flush(out, copied, i)?;
                    i = skip_literal(b, i, false)?;
                    out.push(STRING);
                    copied = i;
                }
                b'"' => i = skip_quoted_ident(b, i)?,
                b'$' => match dollar_quote_end(sql, i)? {
                    Some(end) => {
                        flush(out, copied, i)?;
                        out.push(STRING);
                        i = end;
                        copied = i;
                    }
                    // A parameter ($1) or a lone dollar: kept as it is.
                    None => {
                        i += 1;
                        while i < b.len() && b[i].is_ascii_digit() {
                            i += 1;
                        }
                    }
                },
                b'.' if b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                    flush(out, copied, i)?;
                    let (end, kind) = number_end(b, i)?;
                    i = end;
                    out.push(kind);
                    copied = i;
                }
                _ => i += 1,
            },
        }
    }
    flush(out, copied, b.len())
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

/// Index just past the numeric constant starting at `i` (a digit, or a dot before one), in
/// the forms PostgreSQL's scanner takes: decimal with `_` between digits, `0x`/`0o`/`0b`
/// integers, a fraction, an exponent; and its placeholder: [`INTEGER`] when the scanner
/// makes an integer token of it (no fraction or exponent, and it fits in 32 bits),
/// [`NUMBER`] otherwise. `None` for text the scanner rejects (`1abc`, `1e`, `1..2`, `1_`):
/// the parse fails for it and not for `1`, so it must not share `1`'s key.
fn number_end(b: &[u8], start: usize) -> Option<(usize, char)> {
    let mut i = start;
    let mut radix = 10;
    let mut integer = true;
    if b[i] == b'0' && matches!(b.get(i + 1), Some(b'x' | b'X' | b'o' | b'O' | b'b' | b'B')) {
        let digit: fn(&u8) -> bool = match b[i + 1] {
            b'x' | b'X' => {
                radix = 16;
                u8::is_ascii_hexdigit
            }
            b'o' | b'O' => {
                radix = 8;
                |d| matches!(d, b'0'..=b'7')
            }
            _ => {
                radix = 2;
                |d| matches!(d, b'0' | b'1')
            }
        };
        i = digits_end(b, i + 2, digit)?;
    } else {
        if b[i] != b'.' {
            i = digits_end(b, i, u8::is_ascii_digit)?;
        }
        if b.get(i) == Some(&b'.') && b.get(i + 1) != Some(&b'.') {
            integer = false;
            i += 1;
            if b.get(i).is_some_and(u8::is_ascii_digit) {
                i = digits_end(b, i, u8::is_ascii_digit)?;
            }
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            integer = false;
            let sign = usize::from(matches!(b.get(i + 1), Some(b'+' | b'-')));
            i = digits_end(b, i + 1 + sign, u8::is_ascii_digit)?;
        }
    }
    // Trailing junk, or a second dot: an error in the scanner.
    if b.get(i).is_some_and(|&c| is_ident_cont(c) || c == b'.') {
        return None;
    }
    let digits = if radix == 10 {
        &b[start..i]
    } else {
        &b[start + 2..i]
    };
    let fits = integer
        && digits
            .iter()
            .filter(|&&d| d != b'_')
            .try_fold(0i64, |v, &d| {
                let d = char::from(d).to_digit(radix)?;
                v.checked_mul(i64::from(radix))?
                    .checked_add(i64::from(d))
                    .filter(|v| *v <= i64::from(i32::MAX))
            })
            .is_some();
    Some((i, if fits { INTEGER } else { NUMBER }))
}

/// Index just past one or more digits (`_` allowed between two of them) from `i`; `None`
/// if there is no digit at `i` or an underscore is not followed by one.
fn digits_end(b: &[u8], mut i: usize, digit: fn(&u8) -> bool) -> Option<usize> {
    if !b.get(i).is_some_and(digit) {
        return None;
    }
    while let Some(c) = b.get(i) {
        if digit(c) {
            i += 1;
        } else if *c == b'_' && b.get(i + 1).is_some_and(digit) {
            i += 2;
        } else {
            break;
        }
    }
    Some(i)
}

#[cfg(test)]
mod tests {
    /// The key with its placeholders spelled out: `<i>` integer, `<n>` other number, `<s>`
    /// string, `<b>` bit string, `<x>` hex string, `<N>` national string.
    fn key(sql: &str) -> Option<String> {
        let names = [
            (super::INTEGER, "<i>"),
            (super::NUMBER, "<n>"),
            (super::STRING, "<s>"),
        ];
        let names = names.into_iter().chain([
            (super::BITS, "<b>"),
            (super::HEX, "<x>"),
            (super::NATIONAL, "<N>"),
        ]);
        let mut key = super::literal_blind_key(sql)?;
        for (c, name) in names {
            key = key.replace(c, name);
        }
        Some(key)
    }

    /// Each statement has the key given, placeholders spelled out.
    fn assert_keys(cases: &[(&str, &str)]) {
        for (sql, want) in cases {
            assert_eq!(key(sql).as_deref(), Some(*want), "{sql:?}");
        }
    }

    #[test]
    fn constants_vanish() {
        assert_eq!(
            key("SELECT abalance FROM pgbench_accounts WHERE aid = 4711;"),
            key("SELECT abalance FROM pgbench_accounts WHERE aid = 12;")
        );
        assert_keys(&[
            ("select 'a''b', 1.5e-3, .5, 7", "select <s>, <n>, <n>, <i>"),
            (
                "select E'it''s', $x$ a ' b $x$, 0x1F, 1_000.5e-3, 1., 0b1_0",
                "select <s>, <s>, <i>, <n>, <n>, <i>",
            ),
            (
                "select B'101', X'1F', N'n', n'm'",
                "select <b>, <x>, <N>, <N>",
            ),
        ]);
    }

    #[test]
    fn integers_are_what_fits_in_32_bits() {
        assert_keys(&[
            ("FETCH 2147483647", "FETCH <i>"),
            ("FETCH 2147483648", "FETCH <n>"),
            ("FETCH 2_147_483_647", "FETCH <i>"),
            ("FETCH 0x7FFFFFFF", "FETCH <i>"),
            ("FETCH 0x80000000", "FETCH <n>"),
            ("FETCH 0o17, 0b11", "FETCH <i>, <i>"),
            ("FETCH 99999999999999999999999", "FETCH <n>"),
        ]);
    }

    #[test]
    fn structure_stays() {
        assert_ne!(key("SELECT 1"), key("UPDATE t SET a = 1"));
        // `?` the operator is not a constant's placeholder.
        assert_ne!(key("SELECT a ? b"), key("SELECT a 1 b"));
        assert_keys(&[
            (
                "select \"t1\".a2 from t1 where x = $1",
                "select \"t1\".a2 from t1 where x = $1",
            ),
            (
                "select 1 -- comment\n, 2 /* c /* nested */ */",
                "select <i> \n, <i>  ",
            ),
            ("select 'héllo', ü", "select <s>, ü"),
            ("SELECT a ? 'k'", "SELECT a ? <s>"),
        ]);
    }

    #[test]
    fn continued_literals_are_one_literal() {
        // One E'' literal continued on the next line: a single string, not a DROP (and,
        // holding a backslash, no shared key at all).
        assert_eq!(key("SELECT E'a'\n'b\\'; DROP TABLE t; --'"), None);
        assert_keys(&[
            ("SELECT E'a'\n'b''; DROP TABLE t; --'", "SELECT <s>"),
            // Plain (no escapes): the literal ends at the quote after the backslash.
            (
                "SELECT 'a'\n'b\\'; DROP TABLE t; --'",
                "SELECT <s>; DROP TABLE t; ",
            ),
            // Without a newline two literals stay two.
            ("SELECT 'a' 'b'", "SELECT <s> <s>"),
        ]);
        assert_eq!(
            key("SELECT 'a' -- c\n  -- d\n 'b', 'c' 'd'"),
            key("SELECT 'x', 'c' 'd'")
        );
    }

    #[test]
    fn text_whose_parse_depends_on_its_constants_gets_no_key() {
        // The parse fails for these and succeeds for their siblings with other constants:
        // sharing a key would hand one's classification to the other.
        for sql in [
            "UPDATE t SET a = 1abc",
            "SELECT 1e",
            "SELECT 1e+",
            "SELECT 1..2",
            "SELECT 1.2.3",
            "SELECT 1_",
            "SELECT 1__0",
            "SELECT 0x",
            "SELECT 0b102",
            "SELECT E'\\u00'",
            "SELECT e'\\xff'",
            "SELECT U&'\\zz'",
            "SELECT u&'d\\0061t'",
            // A control character outside a literal: refused by the scanner, and it could
            // pass for a placeholder.
            "SELECT \u{1}",
            "SELECT 1 \u{0}",
        ] {
            assert_eq!(key(sql), None, "{sql:?}");
        }
        // Inside a literal it is only data.
        assert_keys(&[("SELECT '\u{1}'", "SELECT <s>")]);
    }

    #[test]
    fn unterminated_gives_none() {
        assert_eq!(key("select 'abc"), None);
        assert_eq!(key("select /* abc"), None);
        assert_eq!(key("select $q$ abc"), None);
    }
}
