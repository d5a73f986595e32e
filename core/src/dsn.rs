//! PostgreSQL connection URLs: parsing the parts the proxy needs, and printing them without
//! credentials so that logs and metrics never carry a password.

use std::fmt;

/// Why a connection URL was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DsnError {
    #[error("connection URL must start with postgres:// or postgresql://")]
    Scheme,
    #[error("connection URL has no host")]
    NoHost,
    #[error("connection URL has an invalid port {0:?}")]
    Port(String),
    #[error("connection URL has a bad percent-escape")]
    Escape,
}

/// A parsed `postgres://user:password@host:port/dbname?param=value` URL.
#[derive(Clone, PartialEq, Eq)]
pub struct Dsn {
    pub user: String,
    pub password: Option<String>,
    pub host: String,
    pub port: u16,
    pub dbname: String,
    /// Query parameters other than the ones above, kept in order (e.g. `sslmode`).
    pub params: Vec<(String, String)>,
}

impl Dsn {
    pub fn parse(url: &str) -> Result<Self, DsnError> {
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .ok_or(DsnError::Scheme)?;
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.split_once('/') {
            Some((a, p)) => (a, p),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            Some(u) => match u.split_once(':') {
                Some((user, pw)) => (decode(user)?, Some(decode(pw)?)),
                None => (decode(u)?, None),
            },
            None => (String::new(), None),
        };
        let (host, port) = split_host_port(hostport)?;
        if host.is_empty() {
            return Err(DsnError::NoHost);
        }
        let mut params = Vec::new();
        let mut user = user;
        let mut password = password;
        let mut dbname = decode(path)?;
        let mut host = host;
        let mut port = port;
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let (k, v) = (decode(k)?, decode(v)?);
            match k.as_str() {
                "user" => user = v,
                "password" => password = Some(v),
                "dbname" => dbname = v,
                "host" => host = v,
                "port" => port = v.parse().map_err(|_| DsnError::Port(v.clone()))?,
                _ => params.push((k, v)),
            }
        }
        if user.is_empty() {
            user = "postgres".to_string();
        }
        if dbname.is_empty() {
            dbname = user.clone();
        }
        Ok(Dsn {
            user,
            password,
            host,
            port,
            dbname,
            params,
        })
    }

    /// The value of a query parameter such as `sslmode`.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `host:port`, for connecting and for messages.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

fn split_host_port(s: &str) -> Result<(String, u16), DsnError> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or(DsnError::NoHost)?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| DsnError::Port(p.to_string()))?,
            None => 5432,
        };
        return Ok((host.to_string(), port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) => Ok((
            decode(h)?,
            p.parse().map_err(|_| DsnError::Port(p.to_string()))?,
        )),
        None => Ok((decode(s)?, 5432)),
    }
}

fn decode(s: &str) -> Result<String, DsnError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or(DsnError::Escape)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| DsnError::Escape)?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| DsnError::Escape)
}

/// Prints the URL with the password replaced, so it is safe for logs.
impl fmt::Display for Dsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pw = if self.password.is_some() { ":***" } else { "" };
        write!(
            f,
            "postgres://{}{}@{}/{}",
            self.user,
            pw,
            self.address(),
            self.dbname
        )
    }
}

impl fmt::Debug for Dsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_url() {
        let d = Dsn::parse("postgres://alice:s%40cret@db.example:5433/app?sslmode=require")
            .expect("valid url");
        assert_eq!(d.user, "alice");
        assert_eq!(d.password.as_deref(), Some("s@cret"));
        assert_eq!(d.host, "db.example");
        assert_eq!(d.port, 5433);
        assert_eq!(d.dbname, "app");
        assert_eq!(d.param("sslmode"), Some("require"));
    }

    #[test]
    fn defaults_port_user_and_db() {
        let d = Dsn::parse("postgresql://localhost").expect("valid url");
        assert_eq!(
            (d.user.as_str(), d.port, d.dbname.as_str()),
            ("postgres", 5432, "postgres")
        );
    }

    #[test]
    fn display_never_shows_password() {
        let d = Dsn::parse("postgres://u:topsecret@h:1/db").expect("valid url");
        assert!(!format!("{d}").contains("topsecret"));
        assert!(!format!("{d:?}").contains("topsecret"));
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(Dsn::parse("mysql://x"), Err(DsnError::Scheme));
        assert_eq!(
            Dsn::parse("postgres://h:notaport/db"),
            Err(DsnError::Port("notaport".into()))
        );
        assert_eq!(Dsn::parse("postgres://u@/db"), Err(DsnError::NoHost));
        assert_eq!(Dsn::parse("postgres://u%zz@h/db"), Err(DsnError::Escape));
    }
}
