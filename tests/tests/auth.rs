//! Scenario 19: who may connect. Clients authenticate to the proxy (SCRAM-SHA-256, MD5, or
//! trust for local demos); the proxy authenticates to the databases with the URLs'
//! credentials. Failures carry PostgreSQL's own SQLSTATEs and messages.

use switchyard_proxy::config::{AuthMethod, UserConfig};
use switchyard_tests::clients::{psql_url, psql_value};
use switchyard_tests::proxy::{proxy_config, start_proxy, Pair, DB};
use switchyard_tests::{Auth, PgCluster};
use tokio_postgres::NoTls;

async fn try_connect(
    cfg: tokio_postgres::Config,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = cfg.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

fn code(e: &tokio_postgres::Error) -> Option<&str> {
    e.as_db_error().map(|d| d.code().code())
}

fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string())
}

async fn auth_matrix(method: AuthMethod) -> anyhow::Result<()> {
    let pair = Pair::start()?;
    let mut config = pair.config();
    config.auth_method = method;
    config.users = vec![
        UserConfig {
            name: "alice".into(),
            password: "alice-pw".into(),
        },
        UserConfig {
            name: "bob".into(),
            password: "bob-pw".into(),
        },
    ];
    let proxy = start_proxy(config).await?;

    let ok = try_connect(proxy_config(&proxy, "alice", Some("alice-pw"))).await?;
    let who: String = ok.query_one("SELECT current_user::text", &[]).await?.get(0);
    // The databases see the URL's user, whoever the client is.
    assert_eq!(who, PgCluster::USER);

    let wrong = try_connect(proxy_config(&proxy, "alice", Some("bob-pw")))
        .await
        .expect_err("wrong password refused");
    assert_eq!(code(&wrong), Some("28P01"));
    assert_eq!(
        message(&wrong),
        "password authentication failed for user \"alice\""
    );

    let unknown = try_connect(proxy_config(&proxy, "mallory", Some("x")))
        .await
        .expect_err("unknown user refused");
    assert_eq!(
        code(&unknown),
        Some("28P01"),
        "unknown users look like wrong passwords"
    );
    assert_eq!(
        message(&unknown),
        "password authentication failed for user \"mallory\""
    );

    let mut other_db = proxy_config(&proxy, "bob", Some("bob-pw"));
    other_db.dbname("nope");
    let e = try_connect(other_db)
        .await
        .expect_err("unknown database refused");
    assert_eq!(code(&e), Some("3D000"));
    assert_eq!(message(&e), "database \"nope\" does not exist");

    // A client that sends no password at all.
    let e = try_connect(proxy_config(&proxy, "bob", None))
        .await
        .expect_err("no password refused");
    assert!(
        format!("{e:?}").contains("password missing") || code(&e) == Some("28P01"),
        "{e:?}"
    );

    // The refused attempts did not disturb the session that got in.
    assert_eq!(
        ok.query_one("SELECT 1::int4", &[]).await?.get::<_, i32>(0),
        1
    );
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_clients() -> anyhow::Result<()> {
    auth_matrix(AuthMethod::ScramSha256).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_clients() -> anyhow::Result<()> {
    auth_matrix(AuthMethod::Md5).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_verifier_from_postgres_is_accepted() -> anyhow::Result<()> {
    let pair = Pair::start()?;
    // Let PostgreSQL compute the verifier, as an operator would copy it from pg_authid.
    pair.old.psql(
        "postgres",
        "SET password_encryption = 'scram-sha-256'; CREATE ROLE carol LOGIN PASSWORD 'carol-pw'",
    )?;
    let verifier = pair.old.psql(
        "postgres",
        "SELECT rolpassword FROM pg_authid WHERE rolname = 'carol'",
    )?;
    assert!(verifier.starts_with("SCRAM-SHA-256$"));
    let mut config = pair.config();
    config.users = vec![UserConfig {
        name: "carol".into(),
        password: verifier,
    }];
    let proxy = start_proxy(config).await?;
    try_connect(proxy_config(&proxy, "carol", Some("carol-pw"))).await?;
    let e = try_connect(proxy_config(&proxy, "carol", Some("nope")))
        .await
        .expect_err("refused");
    assert_eq!(code(&e), Some("28P01"));
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_mode_accepts_only_the_url_user() -> anyhow::Result<()> {
    let pair = Pair::start()?;
    let proxy = start_proxy(pair.config()).await?;
    try_connect(proxy_config(&proxy, PgCluster::USER, None)).await?;
    let e = try_connect(proxy_config(&proxy, "someone", None))
        .await
        .expect_err("refused");
    assert_eq!(code(&e), Some("28000"));
    assert_eq!(message(&e), "role \"someone\" does not exist");
    proxy.shutdown().await;
    Ok(())
}

/// The proxy logs in to SCRAM and MD5 databases with the URLs' passwords; a wrong one in the
/// URL reaches the client as the server's own error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_authenticates_to_scram_and_md5_databases() -> anyhow::Result<()> {
    let pair = Pair::start_with(
        PgCluster::builder().auth(Auth::Scram),
        PgCluster::builder().auth(Auth::Md5),
    )?;
    let config = pair.config();
    assert!(config.old.contains(PgCluster::PASSWORD));
    let proxy = start_proxy(config.clone()).await?;
    let c = try_connect(proxy_config(&proxy, PgCluster::USER, None)).await?;
    assert_eq!(
        c.query_one("SELECT 2::int4", &[]).await?.get::<_, i32>(0),
        2
    );
    proxy.shutdown().await;

    let mut bad = config;
    bad.old = bad.old.replace(PgCluster::PASSWORD, "not-the-password");
    let proxy = start_proxy(bad).await?;
    let e = try_connect(proxy_config(&proxy, PgCluster::USER, None))
        .await
        .expect_err("backend auth fails");
    assert_eq!(code(&e), Some("28P01"), "{e}");
    proxy.shutdown().await;
    Ok(())
}

/// TLS to the proxy where a certificate is configured; `sslmode=require` against a proxy
/// without one fails with libpq's clear message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_when_configured_and_clear_error_when_not() -> anyhow::Result<()> {
    let pair = Pair::start()?;
    let dir = tempfile::tempdir()?;
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    let cert_path = dir.path().join("proxy.crt");
    let key_path = dir.path().join("proxy.key");
    std::fs::write(&cert_path, cert.cert.pem())?;
    std::fs::write(&key_path, cert.signing_key.serialize_pem())?;

    let mut config = pair.config();
    config.tls_cert = Some(cert_path);
    config.tls_key = Some(key_path);
    let proxy = start_proxy(config).await?;
    let url = format!(
        "postgres://{}@{}/{DB}?sslmode=require",
        PgCluster::USER,
        proxy.listen_addr()
    );
    assert_eq!(psql_value(&url, "SELECT 'over tls'").await?, "over tls");
    let url = format!(
        "postgres://{}@{}/{DB}?sslmode=require",
        PgCluster::USER,
        proxy.listen_addr()
    );
    let info = psql_url(&url, "\\conninfo").await?;
    assert!(
        String::from_utf8_lossy(&info.stdout).contains("SSL connection"),
        "{}",
        String::from_utf8_lossy(&info.stdout)
    );
    proxy.shutdown().await;

    let plain = start_proxy(pair.config()).await?;
    let url = format!(
        "postgres://{}@{}/{DB}?sslmode=require",
        PgCluster::USER,
        plain.listen_addr()
    );
    let out = psql_url(&url, "SELECT 1").await?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("server does not support SSL, but SSL was required"),
        "{err}"
    );
    // sslmode=prefer falls back to plaintext and works.
    let url = format!(
        "postgres://{}@{}/{DB}?sslmode=prefer",
        PgCluster::USER,
        plain.listen_addr()
    );
    psql_value(&url, "SELECT 1").await?;
    plain.shutdown().await;
    Ok(())
}
