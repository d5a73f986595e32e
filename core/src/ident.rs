//! SQL identifiers: quoting, and `schema.table` names as users type them.

use std::fmt;

/// Quotes a string literal for PostgreSQL, whatever `standard_conforming_strings` says
/// (an escape-string literal, backslashes and quotes escaped).
pub fn quote_literal(value: &str) -> String {
    format!("E'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A dollar-quoted literal of `text` (`$sy$...$sy$`, the tag lengthened until the text does
/// not hold it): no escaping, whatever the session's settings, and cheap to parse.
pub fn dollar_quoted(text: &str) -> String {
    let mut tag = String::from("sy");
    while text.contains(&format!("${tag}$")) {
        tag.push('x');
    }
    format!("${tag}${text}${tag}$")
}

/// Quotes an identifier for SQL: always double-quoted, inner quotes doubled, so any name
/// (mixed case, spaces, keywords, dots) is taken literally.
pub fn quote_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// A table name with its schema.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QualifiedName {
    pub schema: String,
    pub name: String,
}

/// Why a table name typed by a user was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("empty table name")]
    Empty,
    #[error("table name {0:?} has an unterminated quote")]
    UnterminatedQuote(String),
    #[error("table name {0:?} has more than two parts (expected schema.table or table)")]
    TooManyParts(String),
    #[error("table name {0:?} has an empty part")]
    EmptyPart(String),
}

impl QualifiedName {
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        QualifiedName {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// Parses `table`, `schema.table`, or either part double-quoted (`"My.Table"`), as
    /// PostgreSQL reads a name: unquoted parts are folded to lower case; no schema means
    /// `public`.
    pub fn parse(input: &str) -> Result<Self, NameError> {
        let text = input.trim();
        if text.is_empty() {
            return Err(NameError::Empty);
        }
        let mut parts: Vec<String> = Vec::new();
        let mut current = String::new();
        let mut chars = text.chars().peekable();
        let mut quoted_part = false;
        while let Some(c) = chars.next() {
            match c {
                '"' => {
                    quoted_part = true;
                    loop {
                        match chars.next() {
                            Some('"') if chars.peek() == Some(&'"') => {
                                chars.next();
                                current.push('"');
                            }
                            Some('"') => break,
                            Some(other) => current.push(other),
                            None => return Err(NameError::UnterminatedQuote(input.to_string())),
                        }
                    }
                }
                '.' => {
                    if current.is_empty() && !quoted_part {
                        return Err(NameError::EmptyPart(input.to_string()));
                    }
                    parts.push(std::mem::take(&mut current));
                    quoted_part = false;
                }
                other => current.extend(other.to_lowercase()),
            }
        }
        if current.is_empty() && !quoted_part {
            return Err(NameError::EmptyPart(input.to_string()));
        }
        parts.push(current);
        match parts.len() {
            1 => Ok(QualifiedName::new("public", parts.remove(0))),
            2 => {
                let name = parts.remove(1);
                Ok(QualifiedName::new(parts.remove(0), name))
            }
            _ => Err(NameError::TooManyParts(input.to_string())),
        }
    }

    /// `"schema"."name"`, ready for SQL.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

/// `schema.name` for people (not quoted; use [`QualifiedName::quoted`] in SQL).
impl fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_inner_quotes() {
        assert_eq!(quote_ident("a"), "\"a\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(quote_ident("Ünï cödé"), "\"Ünï cödé\"");
    }

    #[test]
    fn literals_double_inner_quotes() {
        assert_eq!(quote_literal("a"), "E'a'");
        assert_eq!(quote_literal("it's \\ ü"), "E'it\\'s \\\\ ü'");
    }

    #[test]
    fn names_parse_as_postgres_reads_them() {
        assert_eq!(
            QualifiedName::parse("Accounts").unwrap(),
            QualifiedName::new("public", "accounts")
        );
        assert_eq!(
            QualifiedName::parse("app.Users").unwrap(),
            QualifiedName::new("app", "users")
        );
        assert_eq!(
            QualifiedName::parse("\"My.Schema\".\"Tab\"\"le\"").unwrap(),
            QualifiedName::new("My.Schema", "Tab\"le")
        );
        assert_eq!(QualifiedName::parse("a.b").unwrap().quoted(), "\"a\".\"b\"");
        assert_eq!(QualifiedName::parse(" "), Err(NameError::Empty));
        assert!(matches!(
            QualifiedName::parse("a.b.c"),
            Err(NameError::TooManyParts(_))
        ));
        assert!(matches!(
            QualifiedName::parse("\"open"),
            Err(NameError::UnterminatedQuote(_))
        ));
        assert!(matches!(
            QualifiedName::parse("a."),
            Err(NameError::EmptyPart(_))
        ));
    }
}
