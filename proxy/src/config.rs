//! The proxy's configuration: every key, its default, and the checks on its value. Loaded
//! from a TOML file, `SWITCHYARD_*` environment variables and flags (flags win).

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use switchyard_core::config_layer::{ConfigError, Origin, Validate};
use switchyard_core::dsn::Dsn;
pub use switchyard_core::retry_kafka::RetryLogConfig;

/// How clients prove who they are to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMethod {
    /// No password; only for local demos. Used automatically when no users are configured,
    /// and then only loopback clients are accepted.
    Trust,
    Md5,
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
}

/// A client user of the proxy. The proxy reaches the databases with the credentials in the
/// `old` and `new` URLs, whoever the client is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// Plain text, or a PostgreSQL SCRAM verifier (`SCRAM-SHA-256$4096:salt$stored:server`),
    /// or an MD5 hash (`md5` + 32 hex digits, md5 auth only).
    pub password: String,
}

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
    pub shadow: crate::shadow::ShadowConfig,
    /// The cutover flag: how instances follow it.
    #[serde(default)]
    pub cutover: CutoverConfig,
    /// Bearer token `POST /api/cutover` requires; needed whenever `admin_listen` is not a
    /// loopback address.
    #[serde(default)]
    pub admin_token: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CutoverConfig {
    /// How often an instance heartbeats and re-reads the flag (a NOTIFY wakes it sooner).
    #[serde(default = "default_cutover_poll_ms")]
    pub poll_ms: u64,
    /// An instance not heard from this long is not live; one that cannot reach the control
    /// table this long stops taking writes.
    #[serde(default = "default_cutover_lease_secs")]
    pub lease_secs: u64,
    /// How long a flip waits for every instance to confirm before it is abandoned.
    #[serde(default = "default_cutover_timeout_secs")]
    pub flip_timeout_secs: u64,
    /// A shadow mismatch confirmed this recently (by any instance) refuses a flip that
    /// moves reads to new.
    #[serde(default = "default_mismatch_window_secs")]
    pub mismatch_window_secs: u64,
    /// A flip that moves writes holds new transactions while those in flight finish; if
    /// they have not within this, the instance does not confirm and the flip is abandoned.
    #[serde(default = "default_write_drain_ms")]
    pub write_drain_ms: u64,
}

fn default_write_drain_ms() -> u64 {
    5000
}

fn default_mismatch_window_secs() -> u64 {
    600
}

fn default_cutover_poll_ms() -> u64 {
    250
}

fn default_cutover_lease_secs() -> u64 {
    5
}

fn default_cutover_timeout_secs() -> u64 {
    10
}

impl Default for CutoverConfig {
    fn default() -> Self {
        CutoverConfig {
            poll_ms: default_cutover_poll_ms(),
            lease_secs: default_cutover_lease_secs(),
            flip_timeout_secs: default_cutover_timeout_secs(),
            mismatch_window_secs: default_mismatch_window_secs(),
            write_drain_ms: default_write_drain_ms(),
        }
    }
}

impl CutoverConfig {
    pub fn poll(&self) -> Duration {
        Duration::from_millis(self.poll_ms.max(10))
    }

    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_secs.max(1))
    }

    /// Never past the flip's own timeout, so an instance gives up before the coordinator.
    pub fn write_drain(&self) -> Duration {
        Duration::from_millis(self.write_drain_ms.max(1)).min(self.flip_timeout() / 2)
    }

    pub fn flip_timeout(&self) -> Duration {
        Duration::from_secs(self.flip_timeout_secs.max(1))
    }
}

/// How writes reach the secondary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MirrorMode {
    /// Passthrough: nothing is written to the new database.
    Off,
    /// Lockstep secondary transaction, PREPARE TRANSACTION on the secondary before the
    /// primary commits, COMMIT PREPARED after.
    TwoPhase,
    /// The same lockstep transaction without PREPARE: the primary's transaction records an
    /// intent (what it changed, and the secondary transaction's id); the primary commits,
    /// then the secondary. For secondaries with `max_prepared_transactions = 0`.
    Lockstep,
    /// `two-phase` when the secondary can prepare transactions; otherwise the proxy does not
    /// start and says which modes it can run.
    Auto,
}

/// What happens to DDL while mirroring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DdlPolicy {
    /// Run it on the secondary too, as text, in the lockstep transaction.
    Mirror,
    /// Run it on the primary only (counted and flagged).
    PrimaryOnly,
    /// Refuse it with an error.
    Reject,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    #[serde(default = "default_mirror_mode")]
    pub mode: MirrorMode,
    #[serde(default = "default_ddl")]
    pub ddl: DdlPolicy,
    /// Bound on each statement on the secondary (server-side statement_timeout), in ms; the
    /// most a slow secondary can add to a client's statement.
    #[serde(default = "default_secondary_statement_timeout")]
    pub secondary_statement_timeout_ms: u64,
    /// lock_timeout on the secondary, in ms.
    #[serde(default = "default_secondary_lock_timeout")]
    pub secondary_lock_timeout_ms: u64,
    /// Refuse (SQLSTATE 0A000, naming the reason) writes the proxy cannot capture, such as
    /// large objects; when false they run on the old database and are counted and listed
    /// in `/api/status` under `statement_mode`.
    #[serde(default)]
    pub strict: bool,
    /// How often each instance drains the change log (writes no proxy mirrored in lockstep:
    /// sessions connected straight to the old database, procedures that commit by
    /// themselves), in ms.
    #[serde(default = "default_log_poll")]
    pub log_poll_ms: u64,
    /// Keys remembered per transaction for re-sync orders; beyond this a table is re-synced
    /// whole, so memory stays bounded for huge transactions.
    #[serde(default = "default_max_tracked_keys")]
    pub max_tracked_keys: usize,
    /// Write statements a claimed transaction runs before the proxy drains what they
    /// captured behind the next one (otherwise at its commit). Each drain is a statement on
    /// the primary (about 0.09 ms of its CPU); draining early lets the secondary apply while
    /// the client goes on. 1 drains behind every write; the default lets short transactions
    /// drain once, at their commit, and long ones stream (docs/benchmarks.md, "Drain
    /// timing").
    #[serde(default = "default_drain_every_writes")]
    pub drain_every_writes: u32,
}

impl Default for MirrorConfig {
    fn default() -> Self {
        MirrorConfig {
            mode: default_mirror_mode(),
            ddl: default_ddl(),
            secondary_statement_timeout_ms: default_secondary_statement_timeout(),
            secondary_lock_timeout_ms: default_secondary_lock_timeout(),
            strict: false,
            log_poll_ms: default_log_poll(),
            max_tracked_keys: default_max_tracked_keys(),
            drain_every_writes: default_drain_every_writes(),
        }
    }
}

fn default_drain_every_writes() -> u32 {
    16
}

fn default_mirror_mode() -> MirrorMode {
    MirrorMode::Auto
}
fn default_ddl() -> DdlPolicy {
    DdlPolicy::Mirror
}
fn default_secondary_statement_timeout() -> u64 {
    2000
}
fn default_secondary_lock_timeout() -> u64 {
    1000
}
fn default_log_poll() -> u64 {
    250
}
fn default_max_tracked_keys() -> usize {
    100_000
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
            shadow: crate::shadow::ShadowConfig::default(),
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
        let mut bad = |key: &str, message: String| {
            errors.push(ConfigError {
                key: key.to_string(),
                origin: origin_of(key),
                message,
            })
        };
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
        if self.mirror.log_poll_ms == 0 {
            bad("mirror.log_poll_ms", "must be at least 1".into());
        }
        if self.mirror.secondary_statement_timeout_ms == 0 {
            bad(
                "mirror.secondary_statement_timeout_ms",
                "must be at least 1".into(),
            );
        }
        if self.mirror.secondary_lock_timeout_ms == 0 {
            bad(
                "mirror.secondary_lock_timeout_ms",
                "must be at least 1".into(),
            );
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
        if !self.users.is_empty() && self.auth_method == AuthMethod::Trust {
            bad(
                "auth_method",
                "trust cannot be combined with configured users".into(),
            );
        }
        for (i, u) in self.users.iter().enumerate() {
            if u.name.is_empty() {
                bad(&format!("users[{i}].name"), "must not be empty".into());
            }
            if let Err(e) = crate::auth::Secret::parse(&u.name, &u.password) {
                bad(&format!("users[{i}].password"), e.to_string());
            } else if self.auth_method == AuthMethod::Md5
                && u.password.starts_with("SCRAM-SHA-256$")
            {
                bad(
                    &format!("users[{i}].password"),
                    "a SCRAM verifier cannot answer md5 authentication; give the password or an md5 hash".into(),
                );
            } else if self.auth_method == AuthMethod::ScramSha256
                && u.password.starts_with("md5")
                && u.password.len() == 35
            {
                bad(
                    &format!("users[{i}].password"),
                    "an md5 hash cannot answer scram-sha-256 authentication; give the password or a SCRAM verifier".into(),
                );
            }
        }
    }
}
