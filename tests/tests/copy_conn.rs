//! `core::copy_conn`, the backfill's COPY reader, against real servers: the bytes it hands
//! out are exactly the COPY stream tokio-postgres delivers (rows larger than its read
//! buffer, NULLs, a Unix socket), every password method, and each failure a user can hit
//! gives a clear error and leaves the session as documented.

use anyhow::{Context, Result};
use bytes::BytesMut;
use futures_util::StreamExt;
use switchyard_core::copy_conn::{CopyConn, CopyConnError};
use switchyard_tests::{Auth, PgCluster};

const DB: &str = "postgres";
/// Far longer than any reply to a small statement takes; only a hang reaches it.
const SMALL_REPLY: std::time::Duration = std::time::Duration::from_secs(10);

async fn read_all(conn: &mut CopyConn, sql: &str) -> Result<Vec<u8>, CopyConnError> {
    let mut copy = conn.copy_out(sql).await?;
    let mut out = BytesMut::new();
    while copy.read(&mut out).await? {}
    Ok(out.to_vec())
}

/// Reads `copy` into `out` until it fails; an error if it ends instead.
async fn read_until_error(
    copy: &mut switchyard_core::copy_conn::CopyOut<'_>,
    out: &mut BytesMut,
) -> Result<CopyConnError> {
    loop {
        match copy.read(out).await {
            Ok(true) => continue,
            Ok(false) => anyhow::bail!("the COPY ended without an error"),
            Err(e) => return Ok(e),
        }
    }
}

/// One session over TCP and one over the cluster's Unix socket.
async fn tcp_and_unix_sessions(cluster: &PgCluster) -> Result<(CopyConn, CopyConn)> {
    let tcp = CopyConn::connect(&cluster.url(DB), "test").await?;
    let socket_url = format!(
        "host={} port={} user={} dbname={DB}",
        cluster.socket_dir().display(),
        cluster.port(),
        PgCluster::USER
    );
    let unix = CopyConn::connect(&socket_url, "test").await?;
    Ok((tcp, unix))
}

async fn read_with_driver(cluster: &PgCluster, sql: &str) -> Result<Vec<u8>> {
    let client = cluster.connect(DB).await?;
    let stream = client.copy_out(sql).await?;
    futures_util::pin_mut!(stream);
    let mut all = Vec::new();
    while let Some(piece) = stream.next().await {
        all.extend_from_slice(&piece?);
    }
    Ok(all)
}

#[tokio::test]
async fn copy_data_is_the_stream_the_server_sent() -> Result<()> {
    let cluster = PgCluster::builder().start()?;
    cluster.psql(
        DB,
        "CREATE TABLE t (id int PRIMARY KEY, note text, big text);
         INSERT INTO t SELECT g, CASE WHEN g % 7 = 0 THEN NULL ELSE 'row ' || g END,
                              CASE WHEN g % 1000 = 1 THEN repeat(md5(g::text), 40000) END
         FROM generate_series(1, 20000) g;",
    )?;
    let queries = [
        "COPY t TO STDOUT (FORMAT binary)",
        "COPY (SELECT id, note FROM t WHERE id < 100) TO STDOUT",
        "COPY (SELECT 1 WHERE false) TO STDOUT (FORMAT binary)",
    ];
    let (mut tcp, mut unix) = tcp_and_unix_sessions(&cluster).await?;
    for sql in queries {
        let expected = read_with_driver(&cluster, sql).await?;
        // Several COPYs on one session: each leaves it ready for the next.
        for round in 0..2 {
            for (how, conn) in [("tcp", &mut tcp), ("unix socket", &mut unix)] {
                let got = read_all(conn, sql).await?;
                assert!(
                    got == expected,
                    "{sql} ({how}, round {round}): {} bytes, driver {}",
                    got.len(),
                    expected.len()
                );
            }
        }
    }
    // 20 of the rows are 1.28 MB each: larger than one read of the socket.
    assert!(read_with_driver(&cluster, queries[0]).await?.len() > 20 * 1_280_000);
    assert_eq!(
        tcp.copy_out_text("COPY (SELECT count(*) FROM t) TO STDOUT")
            .await?,
        "20000\n"
    );
    assert!(!tcp.is_broken() && !unix.is_broken());
    Ok(())
}

/// Large COPYs over TCP are read in batches (the socket's receive low-water mark raised):
/// the data is still exactly the server's, including the last piece (smaller than a
/// batch), data that trickles in with pauses, and an error in the middle; the session
/// then answers small statements (a raised mark would leave their replies unread).
#[tokio::test]
async fn large_copies_are_read_in_batches_without_losing_or_holding_back_data() -> Result<()> {
    let cluster = PgCluster::builder().start()?;
    let (mut tcp, mut unix) = tcp_and_unix_sessions(&cluster).await?;
    let queries = [
        // About 9 MB, then a last piece of a few bytes.
        "COPY (SELECT g, md5(g::text) FROM generate_series(1, 200001) g) TO STDOUT (FORMAT binary)",
        // Pauses of 50 ms after the first MB: batched reads take what has arrived.
        "COPY (SELECT g, CASE WHEN g % 40000 = 0 THEN pg_sleep(0.05)::text END, md5(g::text) \
               FROM generate_series(1, 200000) g) TO STDOUT",
    ];
    for sql in queries {
        let expected = read_with_driver(&cluster, sql).await?;
        assert!(
            expected.len() > 4 * 1024 * 1024,
            "{sql}: {} bytes",
            expected.len()
        );
        for (how, conn, batched) in [("tcp", &mut tcp, true), ("unix socket", &mut unix, false)] {
            // A piece left unread would hang the read: bounded, so that shows as a failure.
            let (got, most) = tokio::time::timeout(SMALL_REPLY * 6, async {
                let mut copy = conn.copy_out(sql).await?;
                let mut got = BytesMut::new();
                let mut most = 1;
                while copy.read(&mut got).await? {
                    most = most.max(copy.peak_receive_mark());
                }
                anyhow::Ok((got, most))
            })
            .await
            .with_context(|| format!("{how}: {sql} never ended"))??;
            assert!(
                got == expected,
                "{sql} ({how}): {} bytes, driver {}",
                got.len(),
                expected.len()
            );
            assert_eq!(
                most > 1,
                batched,
                "{sql} ({how}): largest receive mark {most}"
            );
            let small = tokio::time::timeout(SMALL_REPLY, async {
                let text = conn
                    .copy_out_text("COPY (SELECT 'small') TO STDOUT")
                    .await?;
                conn.execute("SELECT 1").await?;
                anyhow::Ok(text)
            })
            .await
            .with_context(|| format!("{how}: no reply to a small statement after {sql}"))??;
            assert_eq!(small, "small\n", "{how}");
        }
    }

    // An error after several MB: the rows before it, the error, a usable session.
    let mut copy = tcp
        .copy_out(
            "COPY (SELECT g, 1 / (g - 300000), md5(g::text) FROM generate_series(1, 400000) g) \
             TO STDOUT (FORMAT binary)",
        )
        .await?;
    let mut out = BytesMut::new();
    let err = tokio::time::timeout(SMALL_REPLY * 6, read_until_error(&mut copy, &mut out))
        .await
        .context("the error in the middle of a batched COPY never came")??;
    drop(copy);
    assert_eq!(err.code(), Some("22012"), "{err}");
    assert!(
        out.len() > 4 * 1024 * 1024,
        "{} bytes before the error",
        out.len()
    );
    assert!(!tcp.is_broken());
    let after = tokio::time::timeout(
        SMALL_REPLY,
        tcp.copy_out_text("COPY (SELECT 'after') TO STDOUT"),
    )
    .await
    .context("no reply to a small statement after the error")??;
    assert_eq!(after, "after\n");
    Ok(())
}

#[tokio::test]
async fn every_password_method_authenticates() -> Result<()> {
    for auth in [Auth::Md5, Auth::Scram] {
        let cluster = PgCluster::builder().auth(auth).start()?;
        let mut conn = CopyConn::connect(&cluster.url(DB), "test")
            .await
            .with_context(|| format!("{auth:?}"))?;
        assert_eq!(
            conn.copy_out_text("COPY (SELECT current_user) TO STDOUT")
                .await?,
            format!("{}\n", PgCluster::USER)
        );

        let url = |password: &str| {
            let user = PgCluster::USER;
            format!(
                "postgres://{user}{password}@127.0.0.1:{}/{DB}",
                cluster.port()
            )
        };
        let err = CopyConn::connect(&url(":not-the-password"), "test")
            .await
            .expect_err("wrong password");
        assert_eq!(err.code(), Some("28P01"), "{auth:?}: {err}");
        assert!(
            err.to_string().contains("password authentication failed"),
            "{auth:?}: {err}"
        );

        let err = CopyConn::connect(&url(""), "test")
            .await
            .expect_err("no password");
        assert!(matches!(err, CopyConnError::NoPassword), "{auth:?}: {err}");
    }
    // Cleartext (`password` in pg_hba.conf) on a cluster of its own.
    let cluster = PgCluster::builder().auth(Auth::Scram).start()?;
    let hba = cluster.data_dir().join("pg_hba.conf");
    let text = std::fs::read_to_string(&hba)?.replace("scram-sha-256", "password");
    std::fs::write(&hba, text)?;
    cluster.psql(DB, "SELECT pg_reload_conf()")?;
    let mut conn = CopyConn::connect(&cluster.url(DB), "test").await?;
    conn.execute("SELECT 1").await?;
    Ok(())
}

#[tokio::test]
async fn server_errors_leave_the_session_usable() -> Result<()> {
    let cluster = PgCluster::builder().start()?;
    let mut conn = CopyConn::connect(&cluster.url(DB), "test").await?;

    // An error after rows were sent: the data so far is handed out, then the error.
    let mut copy = conn
        .copy_out(
            "COPY (SELECT 1 / (g - 50000) FROM generate_series(1, 60000) g) \
             TO STDOUT (FORMAT binary)",
        )
        .await?;
    let mut out = BytesMut::new();
    let err = read_until_error(&mut copy, &mut out).await?;
    drop(copy);
    assert_eq!(err.code(), Some("22012"), "{err}");
    assert!(err.to_string().contains("division by zero"), "{err}");
    assert!(!out.is_empty(), "rows before the error were handed out");
    assert!(!conn.is_broken());

    // Refused at the start, in execute(), and by a statement timeout.
    let err = read_all(&mut conn, "COPY nope TO STDOUT")
        .await
        .expect_err("no table");
    assert_eq!(err.code(), Some("42P01"), "{err}");
    let err = conn.execute("SELEC 1").await.expect_err("syntax");
    assert_eq!(err.code(), Some("42601"), "{err}");
    conn.execute("SET statement_timeout = 50").await?;
    let err = read_all(&mut conn, "COPY (SELECT pg_sleep(5)) TO STDOUT")
        .await
        .expect_err("timeout");
    assert_eq!(err.code(), Some("57014"), "{err}");
    conn.execute("SET statement_timeout = 0").await?;

    // A COPY in execute() is refused (its data would be lost); the session is then broken.
    assert_eq!(
        read_all(&mut conn, "COPY (SELECT 7) TO STDOUT").await?,
        b"7\n"
    );
    let err = conn
        .execute("COPY (SELECT 1) TO STDOUT")
        .await
        .expect_err("copy in execute");
    assert!(matches!(err, CopyConnError::Protocol(_)), "{err}");
    assert!(conn.is_broken());
    let err = conn.execute("SELECT 1").await.expect_err("broken session");
    assert!(err.to_string().contains("broke earlier"), "{err}");

    // A COPY dropped before its end breaks the session too.
    let mut conn = CopyConn::connect(&cluster.url(DB), "test").await?;
    let mut copy = conn
        .copy_out("COPY (SELECT g FROM generate_series(1, 100000) g) TO STDOUT")
        .await?;
    assert!(copy.read(&mut BytesMut::new()).await?);
    drop(copy);
    assert!(conn.is_broken());
    Ok(())
}

#[tokio::test]
async fn connection_failures_are_clear() -> Result<()> {
    // Bound and never listening: nothing else can take the port meanwhile.
    let (held, port) = switchyard_tests::refusing_port()?;
    let err = CopyConn::connect(&format!("postgres://postgres@127.0.0.1:{port}/x"), "test")
        .await
        .expect_err("nothing listens");
    assert!(
        matches!(&err, CopyConnError::Connect { addr, .. } if *addr == format!("127.0.0.1:{port}")),
        "{err:#}"
    );
    drop(held);
    // A server that accepts and hangs up before the startup is answered.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let hang_up = tokio::spawn(async move {
        let (sock, _) = listener.accept().await?;
        drop(sock);
        anyhow::Ok(())
    });
    let err = CopyConn::connect(&format!("postgres://postgres@127.0.0.1:{port}/x"), "test")
        .await
        .expect_err("hung up");
    assert!(
        format!("{err:#}").contains(&format!("127.0.0.1:{port}")),
        "{err:#}"
    );
    hang_up.await??;
    // TLS settings that cannot be honoured fail before connecting, the password hidden.
    let err = CopyConn::connect(
        "postgres://postgres:hunter2@127.0.0.1:1/x?sslmode=verify-full&sslrootcert=/no/such.crt",
        "test",
    )
    .await
    .expect_err("tls");
    assert!(matches!(err, CopyConnError::Tls(_)), "{err}");
    assert!(
        format!("{err:#}").contains("/no/such.crt") && !format!("{err:#}").contains("hunter2"),
        "{err:#}"
    );
    let err = CopyConn::connect("postgres://postgres@127.0.0.1:notaport/x", "test")
        .await
        .expect_err("bad url");
    assert!(matches!(err, CopyConnError::Url(_)), "{err}");

    let cluster = PgCluster::builder().start()?;
    let err = CopyConn::connect(&cluster.url("no_such_db"), "test")
        .await
        .expect_err("unknown database");
    assert_eq!(err.code(), Some("3D000"), "{err}");

    // The server goes away in the middle of a COPY.
    let mut conn = CopyConn::connect(&cluster.url(DB), "test").await?;
    let mut copy = conn
        .copy_out("COPY (SELECT g, pg_sleep(0.001) FROM generate_series(1, 100000) g) TO STDOUT")
        .await?;
    let mut out = BytesMut::new();
    assert!(copy.read(&mut out).await?);
    cluster.kill()?;
    let err = read_until_error(&mut copy, &mut out).await?;
    drop(copy);
    // SIGKILL: no error message, the socket closes.
    assert!(
        matches!(err, CopyConnError::Closed | CopyConnError::Io(_)),
        "{err}"
    );
    assert!(conn.is_broken());
    Ok(())
}
