//! The classifier caches a classification per statement shape (the text with its constants
//! blanked). A statement the server rejects for a constant's text must not decide how the
//! other statements of its shape are classified.

use anyhow::{ensure, Context, Result};
use switchyard_tests::mirror::pair_with;
use switchyard_tests::proxy::{connect_proxy, start_proxy};
use switchyard_tests::shadow::{shadow_config, wait_shadow};
use tokio_postgres::error::SqlState;

/// `SELECT ... WHERE id = 1abc` (trailing junk: a syntax error) once cached "unparsable"
/// for `SELECT ... WHERE id = 1`, which was then no read: never shadow-compared on new,
/// never routed to new in the cutover's read phases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_after_a_rejected_sibling_is_still_a_read() -> Result<()> {
    let pair = pair_with("CREATE TABLE t (id int PRIMARY KEY, n int); INSERT INTO t VALUES (1, 7)")
        .await?;
    let proxy = start_proxy(shadow_config(&pair)).await?;
    let c = connect_proxy(&proxy).await?;
    for bad in [
        "SELECT n FROM t WHERE id = 1abc",
        "SELECT n FROM t WHERE id = 1e",
    ] {
        let e = c.simple_query(bad).await.err().context("rejected")?;
        ensure!(e.code() == Some(&SqlState::SYNTAX_ERROR), "{bad}: {e}");
    }
    c.simple_query("SELECT n FROM t WHERE id = 1").await?;
    wait_shadow(&proxy, "the read to be compared on new", |s| {
        s["totals"]["sampled"] == 1 && s["totals"]["matched"] == 1
    })
    .await?;
    Ok(())
}
