//! Protocol behaviour through the proxy: extended-protocol details with tokio-postgres, and
//! raw messages no driver sends (FunctionCall, 3.2 startup, malformed input).

use bytes::BytesMut;
use switchyard_proxy::protocol::backend::BackendMessage;
use switchyard_tests::mirror::{proxied, Proxied};
use switchyard_tests::proxy::{connect_proxy, start_proxy, wait_for_sessions, Pair, DB};
use switchyard_tests::wire::{first_error, message, tags, Wire};
use switchyard_tests::PgCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_portals_pipelines_and_errors() -> anyhow::Result<()> {
    let Proxied { proxy, pair: _pair } = proxied("").await?;
    let client = connect_proxy(&proxy).await?;
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 100) g")
        .await?;

    // Named statement, typed parameters, binary results; Describe shows the columns.
    let stmt = client
        .prepare("SELECT id, v FROM t WHERE id <= $1 ORDER BY id")
        .await?;
    assert_eq!(
        stmt.columns().iter().map(|c| c.name()).collect::<Vec<_>>(),
        vec!["id", "v"]
    );
    let rows = client.query(&stmt, &[&10i32]).await?;
    assert_eq!(rows.len(), 10);
    assert_eq!(rows[9].get::<_, String>(1), "v10");

    // A portal read in pieces: Execute with a row limit answers PortalSuspended until done.
    let mut tx_client = connect_proxy(&proxy).await?;
    let tx = tx_client.transaction().await?;
    let tx_stmt = tx
        .prepare("SELECT id, v FROM t WHERE id <= $1 ORDER BY id")
        .await?;
    let portal = tx.bind(&tx_stmt, &[&100i32]).await?;
    let mut seen = 0;
    loop {
        let chunk = tx.query_portal(&portal, 30).await?;
        if chunk.is_empty() {
            break;
        }
        assert!(chunk.len() <= 30);
        seen += chunk.len();
    }
    assert_eq!(seen, 100);
    tx.commit().await?;

    // A pipeline with an error in the middle: the server skips to Sync; later requests
    // in their own Sync still succeed.
    let ok1 = client.query_one("SELECT 1::int", &[]);
    let bad = client.query_one("SELECT 1/0", &[]);
    let ok2 = client.query_one("SELECT 2::int", &[]);
    let (a, b, c) = tokio::join!(ok1, bad, ok2);
    assert_eq!(a?.get::<_, i32>(0), 1);
    assert_eq!(
        b.expect_err("division by zero").code().map(|c| c.code()),
        Some("22012")
    );
    assert_eq!(c?.get::<_, i32>(0), 2);

    // Many pipelined statements complete in order.
    let c = &client;
    let futs: Vec<_> = (0..50i32)
        .map(|i| async move { c.query_one("SELECT $1::int + 1", &[&i]).await })
        .collect();
    let results = futures_join_all(futs).await;
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r?.get::<_, i32>(0), i as i32 + 1);
    }
    proxy.shutdown().await;
    Ok(())
}

async fn futures_join_all<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    // Polls all together (pipelining) without pulling in the futures crate.
    let mut set = Vec::with_capacity(futs.len());
    let mut pinned: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut done: Vec<Option<F::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all = true;
        for (i, f) in pinned.iter_mut().enumerate() {
            if done[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => done[i] = Some(v),
                    std::task::Poll::Pending => all = false,
                }
            }
        }
        if all {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    for d in done {
        set.extend(d);
    }
    set
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_and_temp_tables_live_on_the_session() -> anyhow::Result<()> {
    let Proxied { proxy, pair: _pair } = proxied("").await?;
    let client = connect_proxy(&proxy).await?;
    client
        .batch_execute("CREATE SCHEMA s1; CREATE TABLE s1.only_here (x int); SET search_path = s1, public; CREATE TEMP TABLE tmp (x int); INSERT INTO tmp VALUES (7)")
        .await?;
    let row = client.query_one("SELECT (SELECT x FROM tmp), current_setting('search_path'), (SELECT count(*) FROM only_here)", &[]).await?;
    assert_eq!(row.get::<_, i32>(0), 7);
    assert_eq!(row.get::<_, String>(1), "s1, public");
    client.batch_execute("RESET ALL").await?;
    let sp: String = client.query_one("SHOW search_path", &[]).await?.get(0);
    assert_eq!(sp, "\"$user\", public");
    client
        .batch_execute("SELECT set_config('application_name', 'changed', false)")
        .await?;
    let app: String = client.query_one("SHOW application_name", &[]).await?.get(0);
    assert_eq!(app, "changed");
    client.batch_execute("DISCARD ALL").await?;
    let err = client
        .query_one("SELECT x FROM tmp", &[])
        .await
        .expect_err("temp table gone after DISCARD ALL");
    assert_eq!(err.code().map(|c| c.code()), Some("42P01"));
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_call_and_protocol_3_2_startup() -> anyhow::Result<()> {
    let Proxied { proxy, pair } = proxied("").await?;
    let oid: u32 = pair
        .old
        .psql(DB, "SELECT 'int4pl(int4,int4)'::regprocedure::oid")?
        .parse()?;

    let mut w = Wire::startup(proxy.listen_addr(), PgCluster::USER, DB).await?;
    // FunctionCall int4pl(40, 2) with binary arguments and result.
    let mut body = Vec::new();
    body.extend_from_slice(&(oid as i32).to_be_bytes());
    body.extend_from_slice(&1i16.to_be_bytes());
    body.extend_from_slice(&1i16.to_be_bytes());
    body.extend_from_slice(&2i16.to_be_bytes());
    for v in [40i32, 2] {
        body.extend_from_slice(&4i32.to_be_bytes());
        body.extend_from_slice(&v.to_be_bytes());
    }
    body.extend_from_slice(&1i16.to_be_bytes());
    w.send_raw(&message(b'F', &body)).await?;
    let got = w.read_until_ready().await?;
    let resp = got
        .iter()
        .find(|f| f.tag() == b'V')
        .expect("FunctionCallResponse");
    assert_eq!(&resp.body()[..], &[0, 0, 0, 4, 0, 0, 0, 42]);

    // A 3.2 client with a protocol extension gets NegotiateProtocolVersion, then a normal
    // 3.0 session.
    let mut w = Wire::connect(proxy.listen_addr()).await?;
    w.send_startup(
        3,
        2,
        &[
            ("user", PgCluster::USER),
            ("database", DB),
            ("_pq_.test_ext", "1"),
        ],
    )
    .await?;
    let first = w.read().await?.expect("a reply");
    match BackendMessage::decode(&first)? {
        BackendMessage::NegotiateProtocolVersion {
            newest_minor,
            unrecognized,
        } => {
            assert_eq!(newest_minor, 0);
            assert_eq!(unrecognized, vec!["_pq_.test_ext".to_string()]);
        }
        other => panic!("expected NegotiateProtocolVersion, got {other:?}"),
    }
    w.read_until_ready().await?;
    let rows = w.query("SELECT 1").await?;
    assert_eq!(tags(&rows), "TDC");
    proxy.shutdown().await;
    Ok(())
}

/// Scenario 20: malformed input gets a specific error and a closed connection, and the proxy
/// keeps serving everyone else meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_is_refused_and_others_keep_working() -> anyhow::Result<()> {
    let pair = Pair::start()?;
    let mut config = pair.config();
    config.max_message_size = 1 << 20;
    let proxy = start_proxy(config).await?;
    let addr = proxy.listen_addr();
    let healthy = connect_proxy(&proxy).await?;

    // Unknown message type after startup.
    let mut w = Wire::startup(addr, PgCluster::USER, DB).await?;
    w.send_raw(&message(b'!', b"")).await?;
    let got = w.read_until_closed().await?;
    let e = first_error(&got).expect("an error before closing");
    assert_eq!((e.code(), e.severity()), ("08P01", "FATAL"));
    assert!(
        e.message().contains("invalid frontend message type 33"),
        "{}",
        e.message()
    );

    // A length field of 2^31 - 1: refused at once, nothing allocated.
    let mut w = Wire::startup(addr, PgCluster::USER, DB).await?;
    w.send_raw(b"Q\x7f\xff\xff\xff").await?;
    let got = w.read_until_closed().await?;
    let e = first_error(&got).expect("an error");
    assert_eq!(e.code(), "08P01");
    assert!(e.message().contains("exceeds the limit"), "{}", e.message());

    // A negative length (the high bit set): invalid.
    let mut w = Wire::startup(addr, PgCluster::USER, DB).await?;
    w.send_raw(b"Q\x80\x00\x00\x00").await?;
    let e = first_error(&w.read_until_closed().await?).expect("an error");
    assert!(
        e.message().contains("invalid message length"),
        "{}",
        e.message()
    );

    // A query over max_message_size.
    let mut w = Wire::startup(addr, PgCluster::USER, DB).await?;
    let big = format!("SELECT '{}'", "x".repeat(2 << 20));
    let mut out = BytesMut::new();
    switchyard_proxy::protocol::frontend::FrontendMessage::Query(big).encode(&mut out);
    let _ = w.send_raw(&out).await; // the proxy may close before reading it all
    let e = first_error(&w.read_until_closed().await?).expect("an error");
    assert!(e.message().contains("max_message_size"), "{}", e.message());

    // Garbage instead of a startup packet.
    let mut w = Wire::connect(addr).await?;
    w.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    let e = first_error(&w.read_until_closed().await?).expect("an error");
    assert_eq!(e.code(), "08P01");

    // An unsupported protocol major version.
    let mut w = Wire::connect(addr).await?;
    w.send_startup(2, 0, &[("user", "postgres")]).await?;
    let e = first_error(&w.read_until_closed().await?).expect("an error");
    assert_eq!(e.code(), "0A000");

    // Truncated message, then an abrupt disconnect mid-message.
    let mut w = Wire::startup(addr, PgCluster::USER, DB).await?;
    w.send_raw(b"Q\x00\x00\x00\x20SELECT").await?;
    drop(w);
    // Disconnect in the middle of the startup packet.
    let mut w = Wire::connect(addr).await?;
    w.send_raw(b"\x00\x00\x00\x50\x00\x03").await?;
    drop(w);

    // Everyone else is unaffected, and the proxy still accepts new sessions.
    let n: i64 = healthy.query_one("SELECT 41::int8 + 1", &[]).await?.get(0);
    assert_eq!(n, 42);
    let fresh = connect_proxy(&proxy).await?;
    assert_eq!(
        fresh
            .query_one("SELECT 1::int4", &[])
            .await?
            .get::<_, i32>(0),
        1
    );
    // The abandoned sessions are cleaned up.
    wait_for_sessions(&proxy, 2, "abandoned sessions to close").await?;
    proxy.shutdown().await;
    Ok(())
}
