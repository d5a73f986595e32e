//! Starting and stopping a proxy: listeners, the accept loop with its connection limit,
//! the admin server, health checks, and graceful shutdown.

use crate::auth::{Secret, SecretError};
use crate::background::Background;
use crate::classify::Classifier;
use crate::config::{AuthMethod, ProxyConfig};
use crate::counters::Counters;
use crate::cutover::api::{CutoverApi, FlipSettings};
use crate::frontend::handle_client;
use crate::frontend_limits::refuse_too_many;
use crate::metrics::CLIENT_REJECTED_TOTAL;
use crate::session_threads::SessionThreads;
use crate::shared::Shared;
use crate::tls::TlsError;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use switchyard_core::direction::Direction;
use switchyard_core::dsn::{Dsn, DsnError};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

/// Why a proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid URL for {which}: {source}")]
    Url {
        which: &'static str,
        source: DsnError,
    },
    #[error("invalid password for user {user:?}: {source}")]
    User { user: String, source: SecretError },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("TLS to the {which} database: {source}")]
    DbTls {
        which: &'static str,
        source: switchyard_core::tls::TlsError,
    },
    #[error("dual writes: {0}")]
    Mirror(String),
}

/// A proxy serving in the background. Dropping it without `shutdown` aborts it.
pub struct RunningProxy {
    listen_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    shutdown_tx: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    counters: Arc<Counters>,
}

impl RunningProxy {
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen_addr
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    pub fn active_sessions(&self) -> usize {
        self.counters
            .sessions_active
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops accepting, lets sessions finish their transactions, and closes whatever is left
    /// at the configured deadline.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown_tx.send(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    /// Runs until a shutdown was requested elsewhere (e.g. by SIGTERM through `shutdown`).
    pub fn shutdown_sender(&self) -> watch::Sender<bool> {
        self.shutdown_tx.clone()
    }

    pub async fn wait(mut self) {
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        if self.task.as_ref().is_some_and(|t| !t.is_finished()) {
            let _ = self.shutdown_tx.send(true);
        }
    }
}

/// Binds the listeners and starts serving. The config must have passed validation.
pub async fn start(config: ProxyConfig) -> Result<RunningProxy, StartError> {
    let old = config.old_dsn().map_err(|source| StartError::Url {
        which: "old",
        source,
    })?;
    let new = config.new_dsn().map_err(|source| StartError::Url {
        which: "new",
        source,
    })?;
    for (which, dsn) in [("old", &old), ("new", &new)] {
        switchyard_core::tls::settings_for(dsn)
            .map_err(|source| StartError::DbTls { which, source })?;
    }
    let mut users = HashMap::new();
    for u in &config.users {
        let secret = Secret::parse(&u.name, &u.password).map_err(|source| StartError::User {
            user: u.name.clone(),
            source,
        })?;
        users.insert(u.name.clone(), secret);
    }
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(c), Some(k)) => Some(crate::tls::acceptor(c, k)?),
        _ => None,
    };
    let listener = TcpListener::bind(&config.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.listen.clone(),
            source,
        })?;
    let listen_addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.listen.clone(),
        source,
    })?;
    let admin_listener = if config.admin_listen.is_empty() {
        None
    } else {
        Some(
            TcpListener::bind(&config.admin_listen)
                .await
                .map_err(|source| StartError::Bind {
                    addr: config.admin_listen.clone(),
                    source,
                })?,
        )
    };
    let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
    if config.effective_auth() == AuthMethod::Trust {
        tracing::warn!(
            user = %old.user,
            database = %old.dbname,
            "No users are configured: local clients may connect as this user and database without a password."
        );
    }
    // Unique per instance: the cutover waits for every registered id, and replicas of a
    // container image share their listen address.
    let instance_id = config.instance_id.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        if host.is_empty() {
            listen_addr.to_string()
        } else {
            format!("{host}:{}", listen_addr.port())
        }
    });
    let kafka = if config.mirror.mode != crate::config::MirrorMode::Off
        && config.retry_log.backend == switchyard_core::retry_kafka::Backend::Kafka
    {
        let sink = crate::mirror::retry_kafka::KafkaSink::start(config.retry_log.kafka.clone())
            .await
            .map_err(|e| StartError::Mirror(format!("the Kafka retry log: {e}")))?;
        tracing::info!(brokers = %config.retry_log.kafka.brokers, topic = %config.retry_log.kafka.topic, "Retry records go to Kafka.");
        Some(sink)
    } else {
        None
    };
    let mirror_for = |direction, primary: &Dsn, secondary: &Dsn, kafka| {
        crate::mirror::Mirror::new(
            config.mirror.clone(),
            direction,
            primary.clone(),
            secondary.clone(),
            instance_id.clone(),
            config.connect_timeout(),
            kafka,
        )
    };
    let mirror = mirror_for(Direction::OldToNew, &old, &new, kafka.clone());
    // The same, the other way round, for the cutover's writes-new: set up once writes are
    // about to move (`Follower::prepare`).
    let mirror_back = mirror_for(Direction::NewToOld, &new, &old, kafka);
    if let Some(m) = &mirror {
        crate::mirror::startup::check(m)
            .await
            .map_err(StartError::Mirror)?;
    }
    let shadow = crate::shadow::Shadow::new(
        &config.shadow,
        &old,
        &new,
        crate::backend::ConnectOptions {
            timeout: config.connect_timeout(),
            max_message_size: config.max_message_size,
        },
    );
    let cutover = Arc::new(crate::cutover::Live::new(config.cutover.lease()));
    let follower = mirror.as_ref().map(|m| crate::cutover::follower::Follower {
        live: cutover.clone(),
        old: old.clone(),
        new: new.clone(),
        instance_id: instance_id.clone(),
        config: config.cutover.clone(),
        connect_timeout: config.connect_timeout(),
        mirror: Some(m.clone()),
        mirror_back: mirror_back.clone(),
        shadow: shadow.clone(),
        ready_since: Default::default(),
        abandoned: Default::default(),
        prepared_for: Default::default(),
        on_new: Default::default(),
    });
    if let Some(f) = &follower {
        // The instance starts on the current epoch, never on a default: until it has read
        // it, it takes no writes and reads stay on old.
        if let Err(e) = f.start().await {
            tracing::warn!(error = %e, "Cannot read the cutover flag yet; writes wait until this instance has.");
        }
    }
    if let Some(m) = mirror_back
        .as_ref()
        .filter(|_| cutover.phase() == switchyard_core::cutover::Phase::WritesNew)
    {
        // Started in writes-new: sessions write to new from the first one on.
        m.activate();
        crate::mirror::startup::check(m)
            .await
            .map_err(StartError::Mirror)?;
    }
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    if let Some(f) = follower {
        tokio::spawn(f.run(shutdown_rx.clone()));
    }
    let cutover_control = Arc::new(crate::mirror::control::Control::new(
        switchyard_core::db::Db::Old,
        old.clone(),
        config.connect_timeout(),
    ));
    let new_control = Arc::new(crate::mirror::control::Control::new(
        switchyard_core::db::Db::New,
        new.clone(),
        config.connect_timeout(),
    ));
    let counters = Arc::new(Counters::default());
    let classifier = Arc::new(Classifier::new(config.classifier_cache_size));
    let cutover_api = Arc::new(CutoverApi {
        live: cutover.clone(),
        old_control: cutover_control.clone(),
        new_control: new_control.clone(),
        settings: FlipSettings::from_config(&config),
        instance_id: instance_id.clone(),
        old: old.clone(),
        new: new.clone(),
        shadow: shadow.clone(),
    });
    let background = Background {
        admin: Arc::new(crate::admin::AdminContext {
            shutdown: shutdown_rx.clone(),
            counters: counters.clone(),
            max_client_connections: config.max_client_connections,
            health: Default::default(),
            classifier: classifier.clone(),
            mirror: mirror.clone(),
            mirror_back: mirror_back.clone(),
            progress: Default::default(),
            history: Default::default(),
            shadow: shadow.clone(),
            cutover: cutover_api,
        }),
        connect: crate::backend::ConnectOptions {
            timeout: config.connect_timeout(),
            max_message_size: config.max_message_size,
        },
        health_interval: Duration::from_secs(config.health_check_interval_secs),
    };
    let connection_slots = Arc::new(Semaphore::new(config.max_client_connections));
    let shared = Arc::new(Shared {
        cutover,
        cutover_control,
        new_control,
        instance_id,
        mirror: mirror.clone(),
        mirror_back,
        shadow,
        classifier,
        old,
        new,
        users,
        mock_secret: rand::random(),
        tls,
        cancel: Default::default(),
        counters: counters.clone(),
        shutdown: shutdown_rx,
        config,
    });
    let metrics = crate::metrics::handle();
    tracing::info!(listen = %listen_addr, admin = ?admin_addr, old = %shared.old, new = %shared.new, "Switchyard proxy started.");
    let listeners = Listeners {
        clients: listener,
        admin: admin_listener,
        connection_slots,
    };
    let task = tokio::spawn(serve(shared, listeners, background, metrics));
    Ok(RunningProxy {
        listen_addr,
        admin_addr,
        shutdown_tx,
        task: Some(task),
        counters,
    })
}

/// Where clients and the admin server connect, and the bound on client connections.
struct Listeners {
    clients: TcpListener,
    admin: Option<TcpListener>,
    connection_slots: Arc<Semaphore>,
}

async fn serve(
    shared: Arc<Shared>,
    listeners: Listeners,
    parts: Background,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
) {
    let Listeners {
        clients: listener,
        admin,
        connection_slots,
    } = listeners;
    let mut shutdown = shared.shutdown.clone();
    let mut background = JoinSet::new();
    parts.spawn(&mut background, admin, metrics);

    let threads = match shared.config.worker_threads {
        1 => None,
        0 => Some(std::thread::available_parallelism().map_or(1, |n| n.get())),
        n => Some(n),
    };
    let threads = match threads.map(|n| SessionThreads::start(&shared, n)) {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => {
            tracing::error!(error = %e, "Could not start the session threads; serving sessions on the main runtime.");
            None
        }
    };
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors and the like: back off briefly, keep serving.
                        tracing::warn!(error = %e, "Accept failed.");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                match connection_slots.clone().try_acquire_owned() {
                    Ok(permit) => match &threads {
                        Some(t) => t.dispatch(tcp, peer, permit),
                        None => {
                            let shared = shared.clone();
                            sessions.spawn(async move {
                                handle_client(shared, tcp, peer).await;
                                drop(permit);
                            });
                        }
                    },
                    Err(_) => {
                        metrics::counter!(CLIENT_REJECTED_TOTAL, "reason" => "max_client_connections").increment(1);
                        sessions.spawn(refuse_too_many(tcp));
                    }
                }
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            _ = crate::shutdown::stopped(&mut shutdown) => break,
        }
    }
    drop(listener);
    match threads {
        Some(t) => {
            let (_, ()) = tokio::join!(
                crate::shutdown::drain_sessions(shared.config.shutdown_timeout(), sessions),
                t.finish()
            );
        }
        None => crate::shutdown::drain_sessions(shared.config.shutdown_timeout(), sessions).await,
    }
    background.abort_all();
    while background.join_next().await.is_some() {}
    tracing::info!("Switchyard proxy stopped.");
}
