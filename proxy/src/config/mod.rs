//! The proxy's configuration: every key, its default, and the checks on its value. Loaded
//! from a TOML file, `SWITCHYARD_*` environment variables and flags (flags win).
//!
//! The top-level keys live here, each section in its own file. Nothing below imports a
//! feature module: the features read their section, so a section can be loaded, checked and
//! tested without the code that uses it.

mod cutover;
mod mirror;
mod shadow;
mod users;

pub use cutover::CutoverConfig;
pub use mirror::{DdlPolicy, MirrorConfig, MirrorMode};
pub use shadow::ShadowConfig;
pub use users::{AuthMethod, ConfiguredPassword, ScramVerifier, SecretError, UserConfig};

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use switchyard_core::config_layer::{ConfigError, Origin, Validate};
use switchyard_core::dsn::Dsn;
// The retry log's section is read by the reconciler too, so it stays in core; this is its
// home as far as the proxy is concerned.
pub use switchyard_core::retry_kafka::RetryLogConfig;

/// Everything `switchyard-proxy` reads at start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// URL of the old (current primary) database, e.g. `postgres://u:p@host:5432/db`.
    pub old: String,
    /// URL of the new database.
    pub new: String,
    /// Address clients connect to.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Address of the admin HTTP server (`/metrics`, `/healthz`, `/api/status`); empty
    /// disables it.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: String,
    /// Name of this proxy instance in status, metrics and the cutover's instance list; must
    /// be unique among the instances in front of the same database. Defaults to the
    /// machine's hostname and the port of `listen`.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// Largest protocol message accepted from a client, in bytes.
    #[serde(default = "default_max_message_size")]
    pub max_message_size: usize,
    /// Client connections beyond this are refused with SQLSTATE 53300.
    #[serde(default = "default_max_client_connections")]
    pub max_client_connections: usize,
    /// Close a client connection idle (outside a transaction) this long, in seconds;
    /// 0 disables.
    #[serde(default)]
    pub idle_timeout_secs: u64,
    /// On SIGTERM, how long sessions in a transaction may take to finish, in seconds.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout_secs: u64,
    /// Timeout for connecting and authenticating to a database, in seconds.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// PEM certificate chain for TLS to clients; TLS is offered only when set (with key).
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Client authentication method when users are configured.
    #[serde(default = "default_auth_method")]
    pub auth_method: AuthMethod,
    /// Client users; when empty, loopback clients may connect without a password as the
    /// user and database of the `old` URL.
    #[serde(default)]
    pub users: Vec<UserConfig>,
    /// Distinct statement shapes whose classification is cached.
    #[serde(default = "default_classifier_cache")]
    pub classifier_cache_size: usize,
    /// Seconds between reachability checks of old and new.
    #[serde(default = "default_health_interval")]
    pub health_check_interval_secs: u64,
    /// Threads serving sessions, each with its own single-threaded runtime (a session
    /// stays on the thread it was given); 0 means one per CPU core, 1 serves sessions on
    /// the runtime that runs the proxy (for the binary: one thread for everything).
    #[serde(default)]
    pub worker_threads: usize,
    /// Dual writes to the new database.
    #[serde(default)]
    pub mirror: MirrorConfig,
    /// Where retry records go: the embedded table (default) or Kafka.
    #[serde(default)]
    pub retry_log: RetryLogConfig,
    /// Shadow reads: sampled reads compared on both databases.
    #[serde(default)]
    pub shadow: ShadowConfig,
    /// The cutover flag: how instances follow it.
    #[serde(default)]
    pub cutover: CutoverConfig,
    /// Bearer token `POST /api/cutover` requires; needed whenever `admin_listen` is not a
    /// loopback address.
    #[serde(default)]
    pub admin_token: Option<String>,
}

fn default_listen() -> String {
    "127.0.0.1:6432".into()
}
fn default_admin_listen() -> String {
    "127.0.0.1:9187".into()
}
fn default_max_message_size() -> usize {
    64 << 20
}
fn default_max_client_connections() -> usize {
    2000
}
fn default_shutdown_timeout() -> u64 {
    30
}
fn default_connect_timeout() -> u64 {
    5
}
fn default_auth_method() -> AuthMethod {
    AuthMethod::ScramSha256
}
fn default_classifier_cache() -> usize {
    10_000
}
fn default_health_interval() -> u64 {
    5
}

impl ProxyConfig {
    /// A config with defaults for everything but the two databases.
    pub fn new(old: impl Into<String>, new: impl Into<String>) -> Self {
        ProxyConfig {
            old: old.into(),
            new: new.into(),
            listen: default_listen(),
            admin_listen: default_admin_listen(),
            instance_id: None,
            max_message_size: default_max_message_size(),
            max_client_connections: default_max_client_connections(),
            idle_timeout_secs: 0,
            shutdown_timeout_secs: default_shutdown_timeout(),
            connect_timeout_secs: default_connect_timeout(),
            tls_cert: None,
            tls_key: None,
            auth_method: default_auth_method(),
            users: Vec::new(),
            classifier_cache_size: default_classifier_cache(),
            health_check_interval_secs: default_health_interval(),
            worker_threads: 0,
            mirror: MirrorConfig::default(),
            retry_log: RetryLogConfig::default(),
            shadow: ShadowConfig::default(),
            cutover: CutoverConfig::default(),
            admin_token: None,
        }
    }

    /// The parsed `old` URL. Valid after `validate` passed.
    pub fn old_dsn(&self) -> Result<Dsn, switchyard_core::dsn::DsnError> {
        Dsn::parse(&self.old)
    }

    pub fn new_dsn(&self) -> Result<Dsn, switchyard_core::dsn::DsnError> {
        Dsn::parse(&self.new)
    }

    pub fn idle_timeout(&self) -> Option<Duration> {
        (self.idle_timeout_secs > 0).then(|| Duration::from_secs(self.idle_timeout_secs))
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs.max(1))
    }

    /// The method actually in force: trust when no users are configured.
    pub fn effective_auth(&self) -> AuthMethod {
        if self.users.is_empty() {
            AuthMethod::Trust
        } else {
            self.auth_method
        }
    }
}

impl Validate for ProxyConfig {
    fn validate(&self, errors: &mut Vec<ConfigError>, origin_of: &dyn Fn(&str) -> Origin) {
        switchyard_core::config_layer::validate_urls(&self.old, &self.new, errors, origin_of);
        self.retry_log.validate("retry_log", errors, origin_of);
        let mut bad =
            |key: &str, message: String| errors.push(ConfigError::at(key, origin_of, message));
        if self.listen.parse::<SocketAddr>().is_err() {
            bad(
                "listen",
                format!("{:?} is not an address like 127.0.0.1:6432", self.listen),
            );
        }
        if let Ok(a) = self.admin_listen.parse::<SocketAddr>() {
            if !a.ip().is_loopback() && self.admin_token.as_deref().unwrap_or("").is_empty() {
                bad(
                    "admin_token",
                    format!(
                        "the admin port listens on {a}, beyond loopback: set admin_token \
                         (SWITCHYARD_ADMIN_TOKEN) so that only holders of it can move the \
                         cutover flag"
                    ),
                );
            }
        }
        if !self.admin_listen.is_empty() && self.admin_listen.parse::<SocketAddr>().is_err() {
            bad(
                "admin_listen",
                format!(
                    "{:?} is not an address like 127.0.0.1:9187",
                    self.admin_listen
                ),
            );
        }
        if self.max_message_size < 1024 || self.max_message_size > (1 << 30) {
            bad(
                "max_message_size",
                "must be between 1024 and 1073741824 bytes".into(),
            );
        }
        if self.max_client_connections == 0 {
            bad("max_client_connections", "must be at least 1".into());
        }
        if self.classifier_cache_size == 0 {
            bad("classifier_cache_size", "must be at least 1".into());
        }
        for (key, message) in self.mirror.problems() {
            bad(&format!("mirror.{key}"), message);
        }
        for (key, message) in self.shadow.problems() {
            bad(&format!("shadow.{key}"), message);
        }
        if self.health_check_interval_secs == 0 {
            bad("health_check_interval_secs", "must be at least 1".into());
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => bad("tls_key", "tls_cert is set but tls_key is not".into()),
            (None, Some(_)) => bad("tls_cert", "tls_key is set but tls_cert is not".into()),
            (Some(c), Some(k)) => {
                for (key, p) in [("tls_cert", c), ("tls_key", k)] {
                    if !p.is_file() {
                        bad(key, format!("{} is not a readable file", p.display()));
                    }
                }
            }
            (None, None) => {}
        }
        for (key, message) in users::problems(&self.users, self.auth_method) {
            bad(&key, message);
        }
    }
}
