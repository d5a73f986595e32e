//! What the proxy does on a client's session stays out of the client's sight: after dual
//! writes through the simple and the extended protocol, in and out of transactions, the
//! session's prepared statements and cursors are its own, and both databases are equal.

use anyhow::{ensure, Result};
use switchyard_tests::mirror::{assert_same, init_tracing, on};
use switchyard_tests::proxy::{connect_proxy, start_proxy, Pair};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_sees_only_its_own_prepared_statements_and_portals() -> Result<()> {
    init_tracing();
    let pair = tokio::task::spawn_blocking(Pair::start).await??;
    let schema = "CREATE TABLE item (id int PRIMARY KEY, name text, qty int)";
    on(&pair.old, schema)?;
    on(&pair.new, schema)?;
    let proxy = start_proxy(pair.config()).await?;
    let mut c = connect_proxy(&proxy).await?;

    // Extended protocol, autocommit and in a transaction (the proxy claims and drains
    // each transaction with statements of its own, in the middle of the client's batches).
    let insert = c.prepare("INSERT INTO item VALUES ($1, $2, $3)").await?;
    for id in 1..=5i32 {
        c.execute(&insert, &[&id, &format!("n{id}"), &(id * 10)])
            .await?;
    }
    let tx = c.transaction().await?;
    for id in 6..=12i32 {
        tx.execute(&insert, &[&id, &"tx", &id]).await?;
    }
    tx.execute("UPDATE item SET qty = qty + 1 WHERE id < $1", &[&4i32])
        .await?;
    tx.commit().await?;
    // Simple protocol, several statements in one Query.
    c.batch_execute(
        "INSERT INTO item VALUES (20, 'simple', 1); \
         BEGIN; DELETE FROM item WHERE id = 6; UPDATE item SET name = 'x' WHERE id = 7; COMMIT",
    )
    .await?;

    let rows = c
        .query(
            "SELECT name, statement FROM pg_prepared_statements WHERE NOT from_sql ORDER BY name",
            &[],
        )
        .await?;
    let prepared: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    // Only what this client has prepared now: the insert and this query (tokio-postgres
    // closes the statements it prepared for one use, like the update).
    ensure!(
        prepared
            .iter()
            .all(|(name, sql)| !name.contains("switchyard")
                && !sql.contains("switchyard")
                && (sql.starts_with("INSERT INTO item")
                    || sql.starts_with("UPDATE item")
                    || sql.starts_with("SELECT name, statement FROM pg_prepared_statements"))),
        "the session shows statements it did not prepare: {prepared:#?}"
    );
    ensure!(prepared.len() == 2, "{prepared:#?}");
    // The unnamed portal running this query is the only one.
    let rows = c
        .query("SELECT name, statement FROM pg_cursors", &[])
        .await?;
    let portals: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    ensure!(
        portals.len() == 1 && portals[0].0.is_empty(),
        "portals the client did not open: {portals:#?}"
    );

    tokio::task::block_in_place(|| assert_same(&pair, &["item"]))?;
    Ok(())
}
