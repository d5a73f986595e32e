//! Command-line flags and how they combine with the config file and the environment.

use crate::config::ProxyConfig;
use clap::Parser;
use std::path::PathBuf;
use switchyard_core::cli_common::{RetryLogArgs, SourceArgs};
use switchyard_core::config_layer::{ConfigError, ConfigErrors};

/// PostgreSQL wire-protocol proxy for moving a live database: point the application here.
///
/// Every setting can also come from a TOML file (--config) and from SWITCHYARD_* environment
/// variables (SWITCHYARD_LISTEN, SWITCHYARD_MAX_CLIENT_CONNECTIONS, ...); flags win over the
/// environment, which wins over the file.
#[derive(Debug, Parser)]
#[command(
    name = "switchyard-proxy",
    version = crate::failpoint::VERSION,
    mut_arg("old", |a| a.help(
        "URL of the old (current) database: postgres://user:password@host:port/dbname"
    )),
    mut_arg("retry_log", |a| a.help(
        "Where retry records go: \"embedded\" (a table in the old database) or \"kafka\" \
         [default: embedded]"
    )),
)]
pub struct Args {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Address clients connect to [default: 127.0.0.1:6432]
    #[arg(long)]
    pub listen: Option<String>,
    /// Address of the admin HTTP server (metrics, status); "" disables it [default: 127.0.0.1:9187]
    #[arg(long)]
    pub admin_listen: Option<String>,
    /// Maximum client connections [default: 2000]
    #[arg(long)]
    pub max_client_connections: Option<usize>,
    /// Largest client protocol message in bytes [default: 67108864]
    #[arg(long)]
    pub max_message_size: Option<usize>,
    /// Close clients idle this many seconds outside a transaction; 0 = never [default: 0]
    #[arg(long)]
    pub idle_timeout_secs: Option<u64>,
    /// Seconds sessions get to finish on SIGTERM [default: 30]
    #[arg(long)]
    pub shutdown_timeout_secs: Option<u64>,
    /// PEM certificate for TLS to clients.
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS to clients.
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// Name of this instance in status, metrics and the cutover; unique per instance
    /// [default: hostname:port]
    #[arg(long)]
    pub instance_id: Option<String>,
    /// Threads serving sessions; 0 = one per CPU core [default: 0]
    #[arg(long)]
    pub worker_threads: Option<usize>,
    /// Dual writes: "two-phase" (PREPARE on --new, which needs max_prepared_transactions >
    /// 0), "lockstep" (no PREPARE: intents recorded on --old), "auto" (two-phase where
    /// possible, else refuse to start naming the choices) or "off" (passthrough)
    /// [default: auto]
    #[arg(long, value_parser = ["two-phase", "lockstep", "auto", "off"])]
    pub mirror_mode: Option<String>,
    #[command(flatten)]
    pub retry_log: RetryLogArgs,
    /// When the broker cannot confirm a record in time: "embedded" (record it in the old
    /// database's table instead) or "fail" (roll the client's transaction back)
    /// [default: embedded]
    #[arg(long, value_parser = ["embedded", "fail"])]
    pub kafka_on_failure: Option<String>,
    /// Shadow reads: share of read-only statements also run on the other database and
    /// compared, 0 to 1 [default: 0]
    #[arg(long)]
    pub shadow_sample_rate: Option<f64>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Move the cutover flag (every running instance follows), or show it: `cutover status`.
    ///
    /// Phases: shadow → canary (--percent of sessions read from new) → reads-new →
    /// writes-new → done. Each flip runs pre-flight checks first, is confirmed by every
    /// live instance, and is abandoned (nothing changes) if one does not confirm in time.
    Cutover(crate::cutover::cli::CutoverArgs),
}

impl Args {
    /// Merges file, environment (`env`, injected for tests) and flags into a checked config.
    pub fn load<I>(&self, env: I) -> Result<ProxyConfig, ConfigErrors>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        self.load_with_warnings(env).map(|(c, _)| c)
    }

    /// `load`, plus the ignored environment variables to warn about.
    pub fn load_with_warnings<I>(
        &self,
        env: I,
    ) -> Result<(ProxyConfig, Vec<ConfigError>), ConfigErrors>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let mut layers = self.retry_log.apply(self.source.layers(env));
        macro_rules! flag {
            ($field:ident) => {
                if let Some(v) = &self.$field {
                    layers = layers.flag(stringify!($field), v.clone());
                }
            };
            ($field:ident as $conv:expr) => {
                if let Some(v) = &self.$field {
                    layers = layers.flag(stringify!($field), $conv(v));
                }
            };
        }
        flag!(listen);
        flag!(admin_listen);
        flag!(instance_id);
        flag!(max_client_connections as |v: &usize| *v as i64);
        flag!(worker_threads as |v: &usize| *v as i64);
        flag!(max_message_size as |v: &usize| *v as i64);
        flag!(idle_timeout_secs as |v: &u64| *v as i64);
        flag!(shutdown_timeout_secs as |v: &u64| *v as i64);
        flag!(tls_cert as |v: &PathBuf| v.display().to_string());
        flag!(tls_key as |v: &PathBuf| v.display().to_string());
        if let Some(m) = &self.mirror_mode {
            layers = layers.flag("mirror.mode", m.clone());
        }
        layers = layers.flags(&[("retry_log.kafka.on_failure", &self.kafka_on_failure)]);
        if let Some(r) = self.shadow_sample_rate {
            layers = layers.flag("shadow.sample_rate", r);
        }
        layers.build_with_warnings()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("switchyard-proxy").chain(list.iter().copied()))
            .expect("valid flags")
    }

    #[test]
    fn mirror_mode_flag() {
        let cfg = args(&[
            "--old",
            "postgres://u@h/db",
            "--new",
            "postgres://u@h2/db",
            "--mirror-mode",
            "off",
        ])
        .load(Vec::new())
        .expect("valid");
        assert_eq!(cfg.mirror.mode, crate::config::MirrorMode::Off);
        let cfg = args(&["--old", "postgres://u@h/db", "--new", "postgres://u@h2/db"])
            .load(Vec::new())
            .expect("valid");
        assert_eq!(cfg.mirror.mode, crate::config::MirrorMode::Auto);
    }

    #[test]
    fn flags_alone_are_enough() {
        let cfg = args(&["--old", "postgres://u@h/db", "--new", "postgres://u@h2/db"])
            .load(Vec::new())
            .expect("valid");
        assert_eq!(cfg.listen, "127.0.0.1:6432");
        assert_eq!(cfg.old_dsn().expect("url").host, "h");
    }

    #[test]
    fn flags_win_over_env() {
        let cfg = args(&[
            "--old",
            "postgres://u@h/db",
            "--new",
            "postgres://u@h/db",
            "--listen",
            "127.0.0.1:7000",
        ])
        .load(vec![
            (
                "SWITCHYARD_LISTEN".to_string(),
                "127.0.0.1:8000".to_string(),
            ),
            (
                "SWITCHYARD_MAX_CLIENT_CONNECTIONS".to_string(),
                "5".to_string(),
            ),
        ])
        .expect("valid");
        assert_eq!(cfg.listen, "127.0.0.1:7000");
        assert_eq!(cfg.max_client_connections, 5);
    }

    #[test]
    fn every_bad_value_is_reported_with_its_key() {
        let err = args(&["--new", "mysql://x", "--listen", "nowhere"])
            .load(vec![(
                "SWITCHYARD_MAX_MESSAGE_SIZE".to_string(),
                "12".to_string(),
            )])
            .expect_err("invalid");
        let text = err.to_string();
        // `old` is missing entirely: serde reports it; the rest come from validation only
        // once types are right, so check the type-level one first.
        assert!(text.contains("old"), "{text}");
        let err = args(&[
            "--old",
            "postgres://u@h/db",
            "--new",
            "mysql://x",
            "--listen",
            "nowhere",
        ])
        .load(vec![(
            "SWITCHYARD_MAX_MESSAGE_SIZE".to_string(),
            "12".to_string(),
        )])
        .expect_err("invalid");
        let keys: Vec<_> = err.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, vec!["new", "listen", "max_message_size"], "{err}");
        assert!(
            err.to_string()
                .contains("environment variable SWITCHYARD_MAX_MESSAGE_SIZE"),
            "{err}"
        );
    }
}

#[cfg(test)]
mod shadow_flag {
    use super::*;

    #[test]
    fn shadow_sample_rate_flag_and_bounds() {
        let base = ["--old", "postgres://u@h/db", "--new", "postgres://u@h2/db"];
        let parse = |extra: &[&str]| {
            Args::try_parse_from(
                std::iter::once("switchyard-proxy")
                    .chain(base.iter().copied())
                    .chain(extra.iter().copied()),
            )
            .expect("flags")
            .load(Vec::new())
        };
        let cfg = parse(&["--shadow-sample-rate", "0.25"]).expect("valid");
        assert_eq!(cfg.shadow.sample_rate, 0.25);
        assert!(cfg.shadow.enabled());
        let err = parse(&["--shadow-sample-rate", "1.5"]).expect_err("out of range");
        assert!(err.to_string().contains("shadow.sample_rate"), "{err}");
        assert!(err.to_string().contains("--shadow-sample-rate"), "{err}");
    }
}

#[cfg(test)]
mod example_config {
    use super::*;

    /// The example shipped in the repository must stay loadable.
    #[test]
    fn example_config_loads() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../switchyard.example.toml");
        let args = Args::try_parse_from([
            "switchyard-proxy",
            "--config",
            path.to_str().expect("utf-8 path"),
        ])
        .expect("flags");
        let cfg = args.load(Vec::new()).expect("example config is valid");
        assert_eq!(cfg.users.len(), 2);
        assert_eq!(cfg.listen, "0.0.0.0:6432");
    }
}
