//! The flags every binary shares, and where they land in the configuration layers.
//!
//! Each binary flattens these (`#[command(flatten)]`) into its own flags, so the three
//! spell `--old`, `--new`, `--config` and the retry-log flags alike and feed them to the
//! same keys; only the wording of a binary's help may differ (`mut_arg`).

use crate::config_layer::Layers;
use std::path::PathBuf;

// Plain comments, not doc comments: clap would take a doc comment on a flattened struct
// as the binary's own description.

// The two databases and the config file.
#[derive(Debug, Clone, clap::Args)]
pub struct SourceArgs {
    /// URL of the old database: postgres://user:password@host:port/dbname
    #[arg(long)]
    pub old: Option<String>,
    /// URL of the new database.
    #[arg(long)]
    pub new: Option<String>,
    /// TOML configuration file.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
}

impl SourceArgs {
    /// The file (lowest), then `SWITCHYARD_*` variables (`env`, injected for tests), then
    /// `--old` and `--new`; a binary adds its own flags on top.
    pub fn layers<I>(&self, env: I) -> Layers
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let mut layers = Layers::new();
        if let Some(path) = &self.config {
            layers = layers.file(path);
        }
        layers
            .env("SWITCHYARD_", env)
            .flags(&[("old", &self.old), ("new", &self.new)])
    }
}

// Where retry records are (the proxy writes them, the reconciler's replay reads them).
#[derive(Debug, Clone, clap::Args)]
pub struct RetryLogArgs {
    /// Where retry records are: "embedded" (a table in the database) or "kafka"
    /// [default: embedded]
    #[arg(long, value_parser = ["embedded", "kafka"])]
    pub retry_log: Option<String>,
    /// Kafka bootstrap servers for --retry-log kafka (host:port,...)
    #[arg(long)]
    pub kafka_brokers: Option<String>,
    /// Kafka topic of the retry log [default: switchyard.retry]
    #[arg(long)]
    pub kafka_topic: Option<String>,
}

impl RetryLogArgs {
    /// Puts the flags given on top of `layers`, under `retry_log`.
    pub fn apply(&self, layers: Layers) -> Layers {
        layers.flags(&[
            ("retry_log.backend", &self.retry_log),
            ("retry_log.kafka.brokers", &self.kafka_brokers),
            ("retry_log.kafka.topic", &self.kafka_topic),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Both {
        #[command(flatten)]
        source: SourceArgs,
        #[command(flatten)]
        retry: RetryLogArgs,
    }

    #[test]
    fn flags_win_over_env_and_land_on_their_keys() {
        let both =
            Both::try_parse_from(["t", "--old", "postgres://u@flag/db", "--kafka-topic", "t1"])
                .expect("valid flags");
        let layers = both.retry.apply(both.source.layers(vec![
            (
                "SWITCHYARD_OLD".to_string(),
                "postgres://u@env/db".to_string(),
            ),
            (
                "SWITCHYARD_NEW".to_string(),
                "postgres://u@env/db".to_string(),
            ),
        ]));
        assert_eq!(
            layers.origin_of("old"),
            crate::config_layer::Origin::Flag("old".into())
        );
        assert_eq!(
            layers.origin_of("new"),
            crate::config_layer::Origin::Env("SWITCHYARD_NEW".into())
        );
        assert!(matches!(
            layers.origin_of("retry_log.kafka.topic"),
            crate::config_layer::Origin::Flag(_)
        ));
        assert_eq!(
            layers.origin_of("retry_log.backend"),
            crate::config_layer::Origin::Default
        );
    }
}
