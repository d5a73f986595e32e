//! Value normalization before hashing: the text a server prints for a value can differ
//! while the value is the same (float printing, numeric scale, time zone, json spacing).
//! Results are always requested in text format, so these work on text.

use std::borrow::Cow;

pub const FLOAT4: u32 = 700;
pub const FLOAT8: u32 = 701;
pub const NUMERIC: u32 = 1700;
pub const TIMESTAMPTZ: u32 = 1184;
pub const JSON: u32 = 114;
pub const JSONB: u32 = 3802;
pub const TEXT: u32 = 25;
pub const VARCHAR: u32 = 1043;
pub const BPCHAR: u32 = 1042;

/// The type a column is compared as: json and jsonb hold the same values, so a column moved
/// from one to the other is not a difference.
pub fn comparable_type(oid: u32) -> u32 {
    if oid == JSON {
        JSONB
    } else {
        oid
    }
}

/// Types whose order depends on a collation: under ORDER BY on such a column the two
/// databases may order equal data differently (another collation or ICU/glibc version).
pub fn is_collatable(oid: u32) -> bool {
    matches!(oid, TEXT | VARCHAR | BPCHAR)
}

/// The normalized form of one non-NULL value of type `oid` in text format.
pub fn normalize(oid: u32, raw: &[u8]) -> Cow<'_, [u8]> {
    let Ok(text) = std::str::from_utf8(raw) else {
        return Cow::Borrowed(raw);
    };
    let out = match oid {
        FLOAT4 => float(text, true),
        FLOAT8 => float(text, false),
        NUMERIC => numeric(text),
        TIMESTAMPTZ => timestamptz(text),
        JSON | JSONB => json(text),
        _ => None,
    };
    match out {
        Some(s) => Cow::Owned(s.into_bytes()),
        None => Cow::Borrowed(raw),
    }
}

/// NaN in one spelling, -0 as 0, and the shortest form that reads back as the same value,
/// so `extra_float_digits` and platform printing do not matter.
fn float(text: &str, single: bool) -> Option<String> {
    let v: f64 = if single {
        f64::from(text.parse::<f32>().ok()?)
    } else {
        text.parse::<f64>().ok()?
    };
    Some(if v.is_nan() {
        "NaN".into()
    } else if v == 0.0 {
        "0".into()
    } else if v.is_infinite() {
        if v > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else if single {
        format!("{}", v as f32)
    } else {
        format!("{v}")
    })
}

/// Drops trailing fractional zeros (1.50 and 1.5000 are the same number under different
/// scales) and the sign of zero.
fn numeric(text: &str) -> Option<String> {
    let t = text.trim();
    if !t.contains('.') || t.contains(['e', 'E']) {
        return (t == "-0").then(|| "0".to_string());
    }
    let t = t.trim_end_matches('0').trim_end_matches('.');
    let zero = t.trim_start_matches('-').chars().all(|c| c == '0');
    Some(if zero { "0".into() } else { t.to_string() })
}

/// An ISO-style timestamptz (`2024-01-02 03:04:05.678+01:30`) as microseconds since the
/// epoch in UTC, so the session's TimeZone does not matter. Other styles are left as they
/// are (both sides run with the client's DateStyle).
fn timestamptz(text: &str) -> Option<String> {
    let b = text.as_bytes();
    if b.len() < 22 || b[4] != b'-' || b[7] != b'-' || b[10] != b' ' || b[13] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { text.get(r)?.parse().ok() };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut at = 19;
    let mut micros = 0i64;
    if b.get(at) == Some(&b'.') {
        let start = at + 1;
        let mut end = start;
        while end < b.len() && b[end].is_ascii_digit() {
            end += 1;
        }
        let digits = text.get(start..end)?;
        let mut padded = format!("{digits:0<6}");
        padded.truncate(6);
        micros = padded.parse().ok()?;
        at = end;
    }
    let sign = match b.get(at)? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let mut offset_parts = text.get(at + 1..)?.split(':');
    let oh: i64 = offset_parts.next()?.parse().ok()?;
    // Minutes and seconds may be left out; None when one is there but not a number.
    let mut optional_part = || -> Option<i64> {
        let part = offset_parts.next().map(str::parse).transpose().ok()?;
        Some(part.unwrap_or(0))
    };
    let om = optional_part()?;
    let os = optional_part()?;
    if text.ends_with("BC") {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    let local = ((days * 24 + h) * 60 + mi) * 60 + s;
    let utc = local - sign * (oh * 3600 + om * 60 + os);
    Some(format!("{}", utc * 1_000_000 + micros))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// json keeps the input's spacing, key order and duplicate keys; jsonb does not. Both
/// become sorted-key compact JSON (serde_json's map is ordered; a later duplicate wins, as
/// in jsonb).
fn json(text: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    serde_json::to_string(&v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(oid: u32, s: &str) -> String {
        String::from_utf8(normalize(oid, s.as_bytes()).into_owned()).expect("utf-8")
    }

    #[test]
    fn floats() {
        assert_eq!(n(FLOAT8, "NaN"), "NaN");
        assert_eq!(n(FLOAT8, "-0"), "0");
        assert_eq!(n(FLOAT8, "0"), "0");
        assert_eq!(n(FLOAT8, "0.1"), n(FLOAT8, "0.10000000000000001"));
        assert_eq!(n(FLOAT8, "-Infinity"), "-Infinity");
        assert_eq!(n(FLOAT4, "0.1"), n(FLOAT4, "0.100000001"));
        assert_ne!(n(FLOAT8, "0.1"), n(FLOAT8, "0.2"));
    }

    #[test]
    fn numeric_scale() {
        assert_eq!(n(NUMERIC, "1.50"), "1.5");
        assert_eq!(n(NUMERIC, "1.5000"), "1.5");
        assert_eq!(n(NUMERIC, "10.000"), "10");
        assert_eq!(n(NUMERIC, "10"), "10");
        assert_eq!(n(NUMERIC, "-0.00"), "0");
        assert_eq!(n(NUMERIC, "NaN"), "NaN");
        assert_ne!(n(NUMERIC, "1.51"), n(NUMERIC, "1.5"));
    }

    #[test]
    fn timestamptz_in_any_zone() {
        let utc = n(TIMESTAMPTZ, "2024-03-01 12:00:00+00");
        assert_eq!(n(TIMESTAMPTZ, "2024-03-01 07:00:00-05"), utc);
        assert_eq!(n(TIMESTAMPTZ, "2024-03-01 17:30:00+05:30"), utc);
        assert_eq!(
            n(TIMESTAMPTZ, "2024-03-01 12:00:00.5+00"),
            n(TIMESTAMPTZ, "2024-03-01 13:00:00.500000+01")
        );
        assert_ne!(n(TIMESTAMPTZ, "2024-03-01 12:00:01+00"), utc);
        assert_eq!(n(TIMESTAMPTZ, "1970-01-01 00:00:00+00"), "0");
        assert_eq!(n(TIMESTAMPTZ, "infinity"), "infinity");
    }

    #[test]
    fn json_and_jsonb() {
        assert_eq!(
            n(JSON, r#"{"b": 1,  "a": [1, 2]}"#),
            n(JSONB, r#"{"a": [1, 2], "b": 1}"#)
        );
        assert_eq!(n(JSON, r#"{"a": 1, "a": 2}"#), n(JSONB, r#"{"a": 2}"#));
        assert_ne!(n(JSON, r#"{"a": 1}"#), n(JSONB, r#"{"a": 2}"#));
        assert_eq!(comparable_type(JSON), comparable_type(JSONB));
    }

    #[test]
    fn other_types_untouched() {
        assert_eq!(n(TEXT, "Ab "), "Ab ");
        assert_eq!(&*normalize(FLOAT8, &[0xff]), &[0xff]);
    }
}
