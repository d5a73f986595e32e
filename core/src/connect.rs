//! Opening a tokio-postgres session to the old or the new database (the tools', and the
//! proxy's own), with the TLS its URL asks for and errors that name the side and show the
//! URL without its password; and [`Writer`], the one way a session that writes rows into a
//! target database is set up.

use crate::dsn::Dsn;
use crate::tls::TlsSettings;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

pub use crate::db::Db;

/// Where a session goes: a URL as given on a tool's command line (a `postgres://` URL or a
/// libpq `key=value` string), or one the proxy's configuration has parsed.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    Url(&'a str),
    Dsn(&'a Dsn),
}

impl Target<'_> {
    /// For people: without credentials.
    fn shown(self) -> String {
        match self {
            Target::Url(url) => shown(url),
            Target::Dsn(dsn) => dsn.to_string(),
        }
    }

    /// tokio-postgres's configuration and the TLS settings, which tokio-postgres cannot
    /// read itself (`sslrootcert`, `verify-full` and the like are ours).
    fn config(self, db: Db) -> Result<(Config, Arc<TlsSettings>), ConnectError> {
        let tls_error = |source| ConnectError::Tls { db, source };
        match self {
            Target::Url(url) => {
                let tls = crate::tls::settings_for_url(url).map_err(tls_error)?;
                let config = crate::tls::strip_tls_params(url)
                    .parse()
                    .map_err(|source| ConnectError::Url {
                        db,
                        shown: shown(url),
                        source,
                    })?;
                Ok((config, tls))
            }
            Target::Dsn(dsn) => {
                let tls = crate::tls::settings_for(dsn).map_err(tls_error)?;
                let mut config = Config::new();
                config
                    .host(&dsn.host)
                    .port(dsn.port)
                    .user(&dsn.user)
                    .dbname(&dsn.dbname);
                if let Some(p) = &dsn.password {
                    config.password(p);
                }
                Ok((config, tls))
            }
        }
    }
}

/// How a session is opened beyond its target and name.
#[derive(Debug, Clone, Copy, Default)]
pub struct SessionOptions<'a> {
    /// The `options` startup parameter (`-c name=value ...`): settings in force from the
    /// session's first statement on, which no `SET` can be forgotten for.
    pub options: Option<&'a str>,
    /// A bound on the whole of connecting (TCP, TLS, authentication). Without one, each
    /// connection attempt has the URL's `connect_timeout`, 10 s if it sets none.
    pub timeout: Option<Duration>,
}

/// The driver of a session opened by [`open_driven_by_caller`].
pub type Connection = tokio_postgres::Connection<
    Socket,
    <MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<Socket>>::Stream,
>;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("the {db} database URL {shown} is not valid")]
    Url {
        db: Db,
        shown: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("the {db} database's TLS settings")]
    Tls {
        db: Db,
        #[source]
        source: crate::tls::TlsError,
    },
    #[error("connecting to the {db} database at {shown}")]
    Connect {
        db: Db,
        shown: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("connecting to the {db} database at {shown}: timed out after {after:?}")]
    Timeout {
        db: Db,
        shown: String,
        after: Duration,
    },
}

impl ConnectError {
    /// The error with its causes, on one line (for errors that are passed on as text).
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            out.push_str(": ");
            out.push_str(&c.to_string());
            cause = c.source();
        }
        out
    }
}

/// `url` for people: without credentials.
pub fn shown(url: &str) -> String {
    crate::dsn::Dsn::parse(url)
        .map(|d| d.to_string())
        .unwrap_or_else(|_| "(unparsable URL)".to_string())
}

/// Opens one session on the tools' defaults (no options, the URL's connect timeout); its
/// driver task runs on the current runtime.
pub async fn connect(db: Db, url: &str, application_name: &str) -> Result<Client, ConnectError> {
    open(
        db,
        Target::Url(url),
        application_name,
        SessionOptions::default(),
    )
    .await
}

/// Opens one session, as `application_name`, with the TLS its URL asks for; its driver
/// task runs on the current runtime. Every tokio-postgres session Switchyard opens (the
/// tools', the proxy's own for catalogs, control tables and mirroring) comes from here.
pub async fn open(
    db: Db,
    target: Target<'_>,
    application_name: &str,
    opts: SessionOptions<'_>,
) -> Result<Client, ConnectError> {
    let (client, connection) = open_driven_by_caller(db, target, application_name, opts).await?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(%db, %err, "Connection ended.");
        }
    });
    Ok(client)
}

/// [`open`], handing the driver to the caller: for a session whose notifications
/// (`LISTEN`) the caller reads off it.
pub async fn open_driven_by_caller(
    db: Db,
    target: Target<'_>,
    application_name: &str,
    opts: SessionOptions<'_>,
) -> Result<(Client, Connection), ConnectError> {
    let (mut config, tls) = target.config(db)?;
    let connector = crate::tls_stream::pg_connector(&mut config, &tls);
    match opts.timeout {
        Some(t) => {
            config.connect_timeout(t);
        }
        None if config.get_connect_timeout().is_none() => {
            config.connect_timeout(Duration::from_secs(10));
        }
        None => {}
    }
    config.application_name(application_name);
    if let Some(o) = opts.options {
        config.options(o);
    }
    let connecting = config.connect(connector);
    let connected =
        match opts.timeout {
            // tokio-postgres's timeout covers each host's TCP connect, not the authentication.
            Some(after) => tokio::time::timeout(after, connecting).await.map_err(|_| {
                ConnectError::Timeout {
                    db,
                    shown: target.shown(),
                    after,
                }
            })?,
            None => connecting.await,
        };
    connected.map_err(|source| ConnectError::Connect {
        db,
        shown: target.shown(),
        source,
    })
}

/// How a Switchyard session that writes rows into a database applies them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteMode {
    /// `session_replication_role = replica`: the database's own triggers and foreign-key
    /// checks and actions do not fire. Whatever they did on the source arrives copied or
    /// captured from there; firing them again on the target would do it twice (audit rows
    /// whose keys collide, cascades applied out of order). Needs the right to set the
    /// parameter (see [`WriterError::NotPermitted`]).
    #[default]
    Replica,
    /// The target's triggers and foreign-key checks and actions fire as for any client
    /// (the backfill's `--fire-new-triggers`); needs no special right.
    FireTriggers,
}

impl WriteMode {
    /// The settings, as one statement batch; `local` for `SET LOCAL` (a probe inside a
    /// transaction that is rolled back). `switchyard.apply = on` in every mode: the
    /// capture triggers Switchyard installs are `ENABLE ALWAYS` (they fire under the
    /// replica role too) and skip sessions that carry it, so a Switchyard write is never
    /// captured and sent back.
    fn settings(self, local: bool) -> String {
        let set = if local { "SET LOCAL" } else { "SET" };
        match self {
            WriteMode::Replica => {
                format!("{set} session_replication_role = replica; {set} switchyard.apply = on")
            }
            WriteMode::FireTriggers => format!("{set} switchyard.apply = on"),
        }
    }
}

/// Why a session could not be made a writer.
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(
        "role {role} may not set session_replication_role on the {db} database. Switchyard \
         writes rows there with session_replication_role = replica, so that the database's \
         own triggers and foreign-key actions do not fire a second time (their effects \
         arrive copied from the other database). To fix it, connect as a superuser, or on a \
         managed service as a member of its admin role (e.g. rds_superuser on Amazon RDS), \
         or on PostgreSQL 15 and later run as a superuser: GRANT SET ON PARAMETER \
         session_replication_role TO {role}"
    )]
    NotPermitted {
        db: Db,
        /// The role, quoted as an identifier.
        role: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("setting up a writing session on the {db} database")]
    Setup {
        db: Db,
        #[source]
        source: tokio_postgres::Error,
    },
}

/// A session that writes rows into a target database, set up with [`WriteMode`]'s
/// settings; every Switchyard writer (the backfill's loading sessions, re-syncs for
/// replay and repair) is one, so none can forget them. Derefs to its client.
pub struct Writer {
    client: Client,
}

impl Writer {
    /// Applies `mode`'s settings to `client` for the rest of its session.
    pub async fn set_up(client: Client, db: Db, mode: WriteMode) -> Result<Writer, WriterError> {
        if let Err(e) = client.batch_execute(&mode.settings(false)).await {
            return Err(writer_error(&client, db, e).await);
        }
        Ok(Writer { client })
    }
}

impl std::ops::Deref for Writer {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl std::ops::DerefMut for Writer {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

/// [`connect`], then [`Writer::set_up`].
pub async fn connect_writer(
    db: Db,
    url: &str,
    application_name: &str,
    mode: WriteMode,
) -> Result<Writer, WriterError> {
    let client = connect(db, url, application_name).await?;
    Writer::set_up(client, db, mode).await
}

/// Checks, before any work, that `client`'s role may set up a [`Writer`] on `db`: the
/// settings are applied in a transaction that is rolled back, so the session is left
/// as it was.
pub async fn check_writer(client: &mut Client, db: Db, mode: WriteMode) -> Result<(), WriterError> {
    let setup = |source| WriterError::Setup { db, source };
    let tx = client.transaction().await.map_err(setup)?;
    let tried = tx.batch_execute(&mode.settings(true)).await;
    tx.rollback().await.map_err(setup)?;
    match tried {
        Ok(()) => Ok(()),
        Err(e) => Err(writer_error(client, db, e).await),
    }
}

/// A failed setup: [`WriterError::NotPermitted`] when the server refused the parameter
/// to the role (named from `current_user`, which the server checks).
async fn writer_error(client: &Client, db: Db, source: tokio_postgres::Error) -> WriterError {
    if source.code() != Some(&SqlState::INSUFFICIENT_PRIVILEGE) {
        return WriterError::Setup { db, source };
    }
    let role = match client.query_one("SELECT current_user::text", &[]).await {
        Ok(row) => crate::ident::quote_ident(row.get(0)),
        Err(_) => "(unknown)".to_string(),
    };
    WriterError::NotPermitted { db, role, source }
}
