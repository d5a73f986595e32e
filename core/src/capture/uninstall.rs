//! Removing change capture from a database that no longer needs it: new once the cutover
//! is `done` (old detached, nobody drains what new would capture). The `_switchyard`
//! schema stays (the cutover's control table lives there).

use super::install::{with_lock_retries, InstallError};
use tokio_postgres::Client;

const TRIGGERS: [&str; 5] = [
    "switchyard_capture_i",
    "switchyard_capture_u",
    "switchyard_capture_d",
    "switchyard_capture_t",
    "switchyard_capture_k",
];

/// Drops the event triggers, then every table's capture triggers (a brief lock per table,
/// tried again while the table is busy, as the install does), and empties the change log.
/// Returns how many tables it cleared.
pub async fn uninstall(client: &Client) -> Result<usize, InstallError> {
    // The event triggers first: a table created meanwhile gets no capture.
    client
        .batch_execute(
            "SET client_min_messages = warning;
             DROP EVENT TRIGGER IF EXISTS switchyard_ddl;
             DROP EVENT TRIGGER IF EXISTS switchyard_drop;
             DO $$ BEGIN
               IF to_regclass('_switchyard.meta') IS NOT NULL THEN
                 DELETE FROM _switchyard.meta WHERE key = 'capture';
               END IF;
             END $$;
             SET lock_timeout = '50ms'",
        )
        .await
        .map_err(InstallError::Sql)?;
    let tables: Vec<String> = client
        .query(
            "SELECT DISTINCT t.tgrelid::regclass::text FROM pg_trigger t
             WHERE t.tgname LIKE 'switchyard\\_capture\\_%' AND NOT t.tgisinternal",
            &[],
        )
        .await
        .map_err(InstallError::Sql)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for table in &tables {
        let sql: String = TRIGGERS
            .iter()
            .map(|t| format!("DROP TRIGGER IF EXISTS {t} ON {table};"))
            .collect();
        with_lock_retries(|| client.batch_execute(&sql)).await?;
    }
    client
        .batch_execute(
            "RESET lock_timeout; RESET client_min_messages;
             DO $$ BEGIN
               IF to_regclass('_switchyard.capture_log') IS NOT NULL THEN
                 DELETE FROM _switchyard.capture_log;
               END IF;
             END $$;",
        )
        .await
        .map_err(InstallError::Sql)?;
    Ok(tables.len())
}
