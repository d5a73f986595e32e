//! TLS to the databases, one setup for every connection Switchyard opens (the proxy's
//! sessions, its secondary, control and shadow connections, the backfill and its COPY path,
//! the reconciler): libpq's `sslmode`, `sslrootcert`, `sslcert`, `sslkey` and
//! `channel_binding`, from the URL, else from libpq's environment variables, else libpq's
//! defaults, with libpq's meanings. rustls does the TLS.
//!
//! | sslmode | encrypted | server certificate checked |
//! |---|---|---|
//! | `disable` | never | — |
//! | `allow`, `prefer` (default) | when the server accepts | no |
//! | `require` | always | no; against `sslrootcert` when that file exists (as libpq) |
//! | `verify-ca` | always | chain to `sslrootcert` |
//! | `verify-full` | always | chain, and the host name in the URL |
//!
//! A setting that cannot be honoured is an error when the settings are read, naming the URL
//! without its password: never a quiet downgrade. (`allow` is taken as `prefer`: it may
//! encrypt where libpq would first try without, never the other way round.)

use crate::dsn::Dsn;
use crate::tls_verify::Lenient;
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// A server that refuses TLS is refused.
    pub fn requires_tls(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }
}

/// libpq's `channel_binding`: SCRAM's `-PLUS` variant ties the password exchange to this
/// TLS connection, so a man in the middle holding another certificate cannot relay it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelBinding {
    Disable,
    Prefer,
    Require,
}

/// Why TLS settings were refused, or a TLS connection failed. `url` is shown without its
/// password.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{url}: {param}={value:?} is not one of {allowed}")]
    BadValue {
        url: String,
        param: &'static str,
        value: String,
        allowed: &'static str,
    },
    #[error("{url}: {param} is not supported by Switchyard ({why})")]
    Unsupported {
        url: String,
        param: String,
        why: &'static str,
    },
    #[error(
        "{url}: sslmode={mode} checks the server's certificate, but there is no root \
         certificate: set sslrootcert (libpq's default {default} does not exist)"
    )]
    NoRootCert {
        url: String,
        mode: &'static str,
        default: String,
    },
    #[error("{url}: channel_binding=require needs TLS, but sslmode=disable")]
    BindingWithoutTls { url: String },
    #[error("{url}: reading {what} {path}: {source}")]
    Read {
        url: String,
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{url}: {path} holds no {what}")]
    Empty {
        url: String,
        what: &'static str,
        path: String,
    },
    #[error("{url}: TLS configuration: {source}")]
    Config {
        url: String,
        #[source]
        source: rustls::Error,
    },
}

/// How one database is reached over TLS. Built once per URL; the rustls configuration is
/// built then too, so a bad file or mode fails at start.
#[derive(Clone)]
pub struct TlsSettings {
    pub mode: SslMode,
    pub channel_binding: ChannelBinding,
    /// Files actually used (after libpq's defaults), for messages and docs.
    pub root_cert: Option<PathBuf>,
    pub client_cert: Option<(PathBuf, PathBuf)>,
    config: Option<Arc<ClientConfig>>,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("mode", &self.mode)
            .field("channel_binding", &self.channel_binding)
            .field("root_cert", &self.root_cert)
            .field("client_cert", &self.client_cert)
            .finish()
    }
}

/// URL parameters this module owns; they are not passed on to the server or to
/// tokio-postgres (which knows only some of them).
pub const TLS_PARAMS: &[&str] = &[
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "channel_binding",
    "sslsni",
    "sslcompression",
];

/// libpq parameters about TLS that cannot be honoured here; refused rather than ignored.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("sslpassword", "decrypt the key file first"),
    ("sslcrl", "certificate revocation lists are not checked"),
    ("sslcrldir", "certificate revocation lists are not checked"),
    (
        "sslnegotiation",
        "only the standard SSLRequest negotiation is used",
    ),
    (
        "ssl_min_protocol_version",
        "rustls speaks TLS 1.2 and 1.3 only",
    ),
    (
        "ssl_max_protocol_version",
        "rustls speaks TLS 1.2 and 1.3 only",
    ),
    ("gssencmode", "GSSAPI encryption is not supported"),
    ("requiressl", "use sslmode=require"),
];

impl TlsSettings {
    /// Plain TCP: for tests and for callers that never reach a database.
    pub fn disabled() -> TlsSettings {
        TlsSettings {
            mode: SslMode::Disable,
            channel_binding: ChannelBinding::Disable,
            root_cert: None,
            client_cert: None,
            config: None,
        }
    }

    /// The settings of `dsn`: its parameters, else `PGSSLMODE`, `PGSSLROOTCERT`,
    /// `PGSSLCERT`, `PGSSLKEY`, `PGCHANNELBINDING`, else libpq's defaults (`prefer`;
    /// `~/.postgresql/root.crt`, `postgresql.crt` and `postgresql.key` when they exist).
    pub fn from_dsn(dsn: &Dsn) -> Result<TlsSettings, TlsError> {
        Self::from_sources(dsn, &|k| std::env::var(k).ok(), home().as_deref())
    }

    fn from_sources(
        dsn: &Dsn,
        env: &dyn Fn(&str) -> Option<String>,
        home: Option<&Path>,
    ) -> Result<TlsSettings, TlsError> {
        let url = dsn.to_string();
        for (param, why) in UNSUPPORTED {
            if dsn.param(param).is_some() {
                return Err(TlsError::Unsupported {
                    url,
                    param: (*param).to_string(),
                    why,
                });
            }
        }
        let get =
            |param: &str, var: &str| dsn.param(param).map(str::to_string).or_else(|| env(var));
        let mode = match get("sslmode", "PGSSLMODE") {
            None => SslMode::Prefer,
            Some(v) => SslMode::parse(&v).ok_or(TlsError::BadValue {
                url: url.clone(),
                param: "sslmode",
                value: v,
                allowed: "disable, allow, prefer, require, verify-ca, verify-full",
            })?,
        };
        let channel_binding = match get("channel_binding", "PGCHANNELBINDING").as_deref() {
            None | Some("prefer") => ChannelBinding::Prefer,
            Some("disable") => ChannelBinding::Disable,
            Some("require") => ChannelBinding::Require,
            Some(v) => {
                return Err(TlsError::BadValue {
                    url,
                    param: "channel_binding",
                    value: v.to_string(),
                    allowed: "disable, prefer, require",
                })
            }
        };
        if mode == SslMode::Disable {
            if channel_binding == ChannelBinding::Require {
                return Err(TlsError::BindingWithoutTls { url });
            }
            return Ok(TlsSettings {
                channel_binding,
                ..TlsSettings::disabled()
            });
        }
        let dot = home.map(|h| h.join(".postgresql"));
        let default_file = |name: &str| dot.as_ref().map(|d| d.join(name));
        let explicit_root = get("sslrootcert", "PGSSLROOTCERT");
        if explicit_root.as_deref() == Some("system") {
            return Err(TlsError::Unsupported {
                url,
                param: "sslrootcert=system".into(),
                why: "name the CA file instead",
            });
        }
        let root_cert = match explicit_root {
            Some(p) => Some(PathBuf::from(p)),
            None => default_file("root.crt").filter(|p| p.exists()),
        };
        if root_cert.is_none() && matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) {
            return Err(TlsError::NoRootCert {
                url,
                mode: mode.as_str(),
                default: default_file("root.crt")
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "~/.postgresql/root.crt".into()),
            });
        }
        let cert = get("sslcert", "PGSSLCERT")
            .map(PathBuf::from)
            .or_else(|| default_file("postgresql.crt").filter(|p| p.exists()));
        let key = get("sslkey", "PGSSLKEY")
            .map(PathBuf::from)
            .or_else(|| default_file("postgresql.key").filter(|p| p.exists()));
        // libpq sends a client certificate only when both files are there.
        let client_cert = cert.zip(key);
        let config = build_config(&url, mode, root_cert.as_deref(), client_cert.as_ref())?;
        Ok(TlsSettings {
            mode,
            channel_binding,
            root_cert,
            client_cert,
            config: Some(Arc::new(config)),
        })
    }

    /// The rustls configuration; None with `sslmode=disable`.
    pub fn client_config(&self) -> Option<Arc<ClientConfig>> {
        self.config.clone()
    }

    /// A configuration that checks no certificate, for connectors that must exist but are
    /// never used (tokio-postgres with `sslmode=disable`).
    pub(crate) fn plain_config() -> Arc<ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("the ring provider speaks TLS 1.2 and 1.3")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Lenient::any(provider)))
            .with_no_client_auth();
        Arc::new(config)
    }
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME").map(PathBuf::from)
}

fn read_pem(url: &str, what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        url: url.to_string(),
        what,
        path: path.display().to_string(),
        source,
    })
}

fn certs(
    url: &str,
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem(url, what, path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Read {
            url: url.to_string(),
            what,
            path: path.display().to_string(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            url: url.to_string(),
            what: "PEM certificate",
            path: path.display().to_string(),
        });
    }
    Ok(certs)
}

fn build_config(
    url: &str,
    mode: SslMode,
    root: Option<&Path>,
    client: Option<&(PathBuf, PathBuf)>,
) -> Result<ClientConfig, TlsError> {
    let cfg_err = |source| TlsError::Config {
        url: url.to_string(),
        source,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(cfg_err)?;
    // `require` checks the chain only when a root certificate is there (as libpq does);
    // `prefer` never: it would rather talk in plain text than fail.
    let check = match mode {
        SslMode::VerifyFull => Check::Full,
        SslMode::VerifyCa => Check::Chain,
        SslMode::Require if root.is_some() => Check::Chain,
        _ => Check::Nothing,
    };
    let verifier: Arc<dyn ServerCertVerifier> = match (check, root) {
        (Check::Nothing, _) | (_, None) => Arc::new(Lenient::any(provider.clone())),
        (check, Some(root)) => {
            let mut store = RootCertStore::empty();
            for c in certs(url, "the root certificate", root)? {
                store.add(c).map_err(cfg_err)?;
            }
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
                    .build()
                    .map_err(|e| TlsError::Config {
                        url: url.to_string(),
                        source: rustls::Error::General(e.to_string()),
                    })?;
            if check == Check::Full {
                webpki
            } else {
                Arc::new(Lenient::chain_only(provider, webpki))
            }
        }
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match client {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let chain = certs(url, "the client certificate", cert)?;
            let pem = read_pem(url, "the client key", key)?;
            let key_der = rustls_pemfile::private_key(&mut pem.as_slice())
                .map_err(|source| TlsError::Read {
                    url: url.to_string(),
                    what: "the client key",
                    path: key.display().to_string(),
                    source,
                })?
                .ok_or_else(|| TlsError::Empty {
                    url: url.to_string(),
                    what: "PEM private key",
                    path: key.display().to_string(),
                })?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(cfg_err)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Nothing,
    Chain,
    Full,
}

/// The settings of `dsn`, built once per process for each distinct URL (certificate files
/// are read once, not at every connection).
pub fn settings_for(dsn: &Dsn) -> Result<Arc<TlsSettings>, TlsError> {
    type Cache = std::sync::Mutex<std::collections::HashMap<String, Arc<TlsSettings>>>;
    static CACHE: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();
    let key = format!("{}|{:?}", dsn.host, dsn.params);
    let cache = CACHE.get_or_init(Default::default);
    if let Some(s) = cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
        return Ok(s);
    }
    let s = Arc::new(TlsSettings::from_dsn(dsn)?);
    if let Ok(mut c) = cache.lock() {
        c.insert(key, s.clone());
    }
    Ok(s)
}

/// [`settings_for`] of a `postgres://` URL or a libpq `key=value` string (whose TLS keys are
/// read the same way; values with spaces are not expected in them).
pub fn settings_for_url(url: &str) -> Result<Arc<TlsSettings>, TlsError> {
    let dsn = match Dsn::parse(url) {
        Ok(d) => d,
        Err(_) => {
            let mut host = String::new();
            let mut params = Vec::new();
            for token in url.split_whitespace() {
                if let Some((k, v)) = token.split_once('=') {
                    let v = v.trim_matches('\'');
                    if k == "host" {
                        host = v.to_string();
                    } else if TLS_PARAMS.contains(&k) || UNSUPPORTED.iter().any(|(u, _)| *u == k) {
                        params.push((k.to_string(), v.to_string()));
                    }
                }
            }
            Dsn {
                user: String::new(),
                password: None,
                host,
                port: 5432,
                dbname: String::new(),
                params,
            }
        }
    };
    settings_for(&dsn)
}

/// `url` without the parameters of [`TLS_PARAMS`] (for tokio-postgres, which refuses the
/// ones it does not know).
pub fn strip_tls_params(url: &str) -> String {
    if !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
        // A key=value string.
        return url
            .split_whitespace()
            .filter(|t| !TLS_PARAMS.contains(&t.split_once('=').map_or(*t, |(k, _)| k)))
            .collect::<Vec<_>>()
            .join(" ");
    }
    let Some((base, query)) = url.split_once('?') else {
        return url.to_string();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| {
            let key = p.split_once('=').map_or(*p, |(k, _)| k);
            !TLS_PARAMS.contains(&key)
        })
        .collect();
    if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    }
}

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tests;
