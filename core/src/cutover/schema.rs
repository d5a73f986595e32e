//! The control tables in the old database's `_switchyard` schema.

use tokio_postgres::Client;

/// Notified on every proposal, commit and withdrawal: instances re-read the state at once
/// rather than at their next poll.
pub const CHANNEL: &str = "switchyard_cutover";

const SCHEMA: &str = r#"
CREATE SCHEMA IF NOT EXISTS _switchyard;
-- One row: the phase every instance runs, and at most one proposal being confirmed.
CREATE TABLE IF NOT EXISTS _switchyard.cutover (
  id boolean PRIMARY KEY DEFAULT true CHECK (id),
  phase text NOT NULL DEFAULT 'shadow',
  epoch bigint NOT NULL DEFAULT 0,
  percent int NOT NULL DEFAULT 0,
  proposed_phase text,
  proposed_epoch bigint,
  proposed_percent int,
  proposed_by text,
  proposed_at timestamptz,
  changed_by text,
  changed_at timestamptz
);
INSERT INTO _switchyard.cutover (id) VALUES (true) ON CONFLICT DO NOTHING;
-- Each instance's heartbeat: the epoch it runs and the proposal it is ready for.
CREATE TABLE IF NOT EXISTS _switchyard.cutover_instances (
  id text PRIMARY KEY,
  epoch bigint NOT NULL,
  phase text NOT NULL,
  ready_epoch bigint,
  retry_backlog bigint NOT NULL DEFAULT 0,
  last_seen timestamptz NOT NULL,
  started timestamptz NOT NULL
);
-- When the instance's shadow reads last confirmed that old and new answer differently.
ALTER TABLE _switchyard.cutover_instances ADD COLUMN IF NOT EXISTS last_mismatch timestamptz;
-- Every flip attempted, whatever its outcome.
CREATE TABLE IF NOT EXISTS _switchyard.cutover_log (
  at timestamptz NOT NULL DEFAULT now(),
  by text NOT NULL,
  from_phase text NOT NULL,
  to_phase text NOT NULL,
  percent int NOT NULL,
  epoch bigint NOT NULL,
  outcome text NOT NULL,
  detail text NOT NULL DEFAULT '',
  wait_ms bigint NOT NULL DEFAULT 0
);
"#;

/// An instance's heartbeat and read of the state, in one round trip. The state row is read
/// `FOR SHARE`: a commit locks it before it re-reads the confirmations, so a heartbeat that
/// takes a confirmation back either lands before that re-read (the flip does not commit)
/// or returns the committed epoch (the instance runs it). An instance never goes on under
/// the old epoch once the new one was committed with its confirmation. Parameters: id,
/// epoch, phase, ready_epoch (or NULL), retry_backlog, seconds since the last confirmed
/// shadow mismatch (or NULL).
pub const HEARTBEAT_SQL: &str = "WITH hb AS (
  INSERT INTO _switchyard.cutover_instances AS i
    (id, epoch, phase, ready_epoch, retry_backlog, last_seen, started, last_mismatch)
  VALUES ($1, $2, $3, $4, $5, clock_timestamp(), clock_timestamp(),
          clock_timestamp() - make_interval(secs => $6))
  ON CONFLICT (id) DO UPDATE SET epoch = EXCLUDED.epoch, phase = EXCLUDED.phase,
    ready_epoch = EXCLUDED.ready_epoch, retry_backlog = EXCLUDED.retry_backlog,
    last_seen = EXCLUDED.last_seen, last_mismatch = EXCLUDED.last_mismatch)
SELECT phase, epoch, percent, proposed_phase, proposed_epoch, proposed_percent,
       extract(epoch FROM proposed_at)::float8
FROM _switchyard.cutover FOR SHARE";

/// Creates the control tables if missing. Several instances may start at once: the
/// advisory lock keeps their CREATEs from racing on the catalog.
pub async fn ensure_schema(client: &Client) -> Result<(), tokio_postgres::Error> {
    // The newest column, so tables made by an older version are brought up to date.
    let exists = client
        .query_one(
            "SELECT EXISTS (SELECT FROM pg_attribute
               WHERE attrelid = to_regclass('_switchyard.cutover_instances')
                 AND attname = 'last_mismatch' AND NOT attisdropped)
               AND to_regclass('_switchyard.cutover_log') IS NOT NULL",
            &[],
        )
        .await?
        .get::<_, bool>(0);
    if exists {
        return Ok(());
    }
    let r = client
        .batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock(hashtext('switchyard.cutover')); {SCHEMA} COMMIT"
        ))
        .await;
    if r.is_err() {
        let _ = client.batch_execute("ROLLBACK").await;
    }
    r
}
