//! Savepoints against the drain's timing: the proxy drains a claimed transaction's changes
//! at its commit, or behind a write once several are undrained, and before a SAVEPOINT;
//! new's transaction repeats the client's savepoints from the first change it gets. Long
//! runs of writes between savepoints (more than one drain's worth), nested savepoints,
//! ROLLBACK TO an outer one after inner drains, RELEASE, through the simple and the
//! extended protocol: both databases must end equal, with nothing replayed.

use anyhow::{ensure, Context, Result};
use switchyard_tests::clients::psql_url;
use switchyard_tests::mirror::{assert_same, init_tracing, retry_records};
use switchyard_tests::proxy::{connect_proxy, start_proxy, Pair, DB};

/// One transaction's statements, from a seed: inserts, updates and deletes of `t`, with
/// savepoints opened, released and rolled back to, nested up to three deep.
fn script(seed: u64, next_id: &mut i64) -> Vec<String> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut rand = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let mut open: Vec<String> = Vec::new();
    let mut out = vec!["BEGIN".to_string()];
    for step in 0..60 {
        match rand(10) {
            0 if open.len() < 3 => {
                let name = format!("s{step}");
                out.push(format!("SAVEPOINT {name}"));
                open.push(name);
            }
            1 if !open.is_empty() => {
                let i = rand(open.len() as u64) as usize;
                out.push(format!("ROLLBACK TO SAVEPOINT {}", open[i]));
                open.truncate(i + 1);
            }
            2 if !open.is_empty() => {
                let i = rand(open.len() as u64) as usize;
                out.push(format!("RELEASE SAVEPOINT {}", open[i]));
                open.truncate(i);
            }
            3 => out.push(format!("UPDATE t SET v = v + 1 WHERE id % 7 = {}", rand(7))),
            4 => out.push(format!("DELETE FROM t WHERE id % 11 = {}", rand(11))),
            _ => {
                *next_id += 1;
                out.push(format!("INSERT INTO t VALUES ({next_id}, 0)"));
            }
        }
    }
    out.push("COMMIT".to_string());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_runs_of_writes_between_savepoints_stay_equal() -> Result<()> {
    init_tracing();
    let pair = tokio::task::spawn_blocking(Pair::start).await??;
    for c in [&pair.old, &pair.new] {
        tokio::task::block_in_place(|| {
            c.psql(DB, "CREATE TABLE t (id bigint PRIMARY KEY, v int NOT NULL)")
        })?;
    }
    let proxy = start_proxy(pair.config()).await?;
    let client = connect_proxy(&proxy).await?;
    let mut next_id = 0;
    for seed in 0..12u64 {
        let statements = script(seed, &mut next_id);
        if seed % 2 == 0 {
            // Simple protocol, one statement per Query.
            for sql in &statements {
                client
                    .batch_execute(sql)
                    .await
                    .with_context(|| format!("seed {seed}: {sql}"))?;
            }
        } else {
            // Extended protocol (each statement Parse/Bind/Execute/Sync).
            for sql in &statements {
                client
                    .execute(sql.as_str(), &[])
                    .await
                    .with_context(|| format!("seed {seed}: {sql}"))?;
            }
        }
    }
    // Writes before a savepoint, undrained when it is taken, then enough after it for a
    // drain, then ROLLBACK TO it: the writes before it must survive on new as on old. Through
    // each protocol, and through psql as one string (with no write before the savepoint too:
    // new's transaction, opened later, must start with it).
    let url = switchyard_tests::proxy::proxy_url(&proxy, "postgres");
    for (how, before) in [("simple", 3), ("extended", 3), ("psql", 3), ("psql", 0)] {
        let mut statements = vec!["BEGIN".to_string()];
        for _ in 0..before {
            next_id += 1;
            statements.push(format!("INSERT INTO t VALUES ({next_id}, 1)"));
        }
        statements.push("SAVEPOINT a".into());
        for _ in 0..12 {
            next_id += 1;
            statements.push(format!("INSERT INTO t VALUES ({next_id}, 2)"));
        }
        statements.push("ROLLBACK TO SAVEPOINT a".into());
        statements.push("COMMIT".into());
        match how {
            "psql" => {
                let out = psql_url(&url, &statements.join("; ")).await?;
                ensure!(
                    out.status.success(),
                    "psql through the proxy failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            _ => {
                for sql in &statements {
                    if how == "extended" {
                        client.execute(sql.as_str(), &[]).await?;
                    } else {
                        client.batch_execute(sql).await?;
                    }
                }
            }
        }
        assert_same(&pair, &["t"])
            .with_context(|| format!("{before} rows before a savepoint, {how}"))?;
    }
    // The claim itself (the first write's) undone by ROLLBACK TO, inside one string: the
    // write after it claims again and reaches new in the same transaction.
    let (a, b) = (next_id + 1, next_id + 2);
    next_id += 2;
    let sql = format!(
        "BEGIN; SAVEPOINT s; INSERT INTO t VALUES ({a}, 7); ROLLBACK TO SAVEPOINT s; \
         INSERT INTO t VALUES ({b}, 7); COMMIT"
    );
    let out = psql_url(&url, &sql).await?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same(&pair, &["t"]).context("a write after ROLLBACK TO undid the claim")?;
    // One string holding a whole transaction (the proxy runs its statements one by one).
    let statements = script(99, &mut next_id);
    client.batch_execute(&statements.join("; ")).await?;
    let n: i64 = client
        .query_one("SELECT count(*) FROM t", &[])
        .await?
        .get(0);
    ensure!(n > 0, "the scripts left no rows to compare");
    assert_same(&pair, &["t"])?;
    ensure!(
        retry_records(&pair)? == 0,
        "something went to the retry log"
    );
    Ok(())
}
