//! Session advisory locks on new, held by one process around a piece of work (rebuilding
//! the deferred indexes, copying the schema).

use anyhow::{Context, Result};
use tokio_postgres::Client;

/// Releases the session advisory lock `key` (`lock` names it in errors) that `control`
/// took for a piece of work that ended with `work`: released whatever the work's result,
/// whose error comes before one releasing the lock.
pub async fn release_after<T>(
    control: &Client,
    key: i64,
    lock: &str,
    work: Result<T>,
) -> Result<T> {
    let unlock = control
        .execute("SELECT pg_advisory_unlock($1)", &[&key])
        .await
        .with_context(|| format!("releasing the {lock}"));
    let out = work?;
    unlock?;
    Ok(out)
}
