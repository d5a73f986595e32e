//! [`PgClusterBuilder`]: options for a new throwaway cluster.

use anyhow::Result;

use super::cluster::PgCluster;
use super::config::Auth;

/// Options for [`PgCluster::builder`]. Defaults: trust auth, `max_prepared_transactions = 10`,
/// not durable (fsync, synchronous_commit and full_page_writes off).
#[derive(Debug, Clone)]
pub struct PgClusterBuilder {
    pub(crate) auth: Auth,
    pub(crate) max_prepared_transactions: u32,
    pub(crate) settings: Vec<(String, String)>,
    pub(crate) durable: bool,
    pub(crate) tls: Option<crate::tls_certs::ServerTls>,
}

impl Default for PgClusterBuilder {
    fn default() -> Self {
        PgClusterBuilder {
            auth: Auth::Trust,
            max_prepared_transactions: 10,
            settings: Vec::new(),
            durable: false,
            tls: None,
        }
    }
}

impl PgClusterBuilder {
    /// How TCP clients authenticate (see [`Auth`]).
    pub fn auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }

    /// `max_prepared_transactions` (two-phase commit needs it above 0).
    pub fn max_prepared_transactions(mut self, n: u32) -> Self {
        self.max_prepared_transactions = n;
        self
    }

    /// Any server setting, written to the configuration file after the harness's own (so it
    /// wins over them).
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }

    /// `true` keeps PostgreSQL's crash safety (fsync etc.); needed by crash/kill tests.
    pub fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }

    /// `ssl = on` with this certificate, and TCP clients accepted over TLS only
    /// (`hostssl` in `pg_hba.conf`; with `client_cert`, `clientcert=verify-full` too).
    pub fn tls(mut self, tls: crate::tls_certs::ServerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Copies the template, configures and starts the cluster; waits until it accepts
    /// connections.
    pub fn start(self) -> Result<PgCluster> {
        PgCluster::create(self)
    }
}
