//! Session settings pinned on every connection whose text output is compared or written:
//! the text form of timestamps, intervals, floats and bytea depends on them, and two
//! servers (or two sessions) must print the same value the same way.

use tokio_postgres::Client;

/// The settings, as one statement batch. `extra_float_digits = 3` gives the shortest exact
/// float text; `DateStyle = ISO` and `IntervalStyle = postgres` are the defaults most
/// servers run with, pinned so a server configured otherwise still agrees with its peer.
pub const PINNED_SETTINGS: &str = "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'; \
     SET IntervalStyle = 'postgres'; SET extra_float_digits = 3; SET bytea_output = 'hex'";

/// Applies [`PINNED_SETTINGS`] to a session.
pub async fn pin_settings(client: &Client) -> Result<(), tokio_postgres::Error> {
    client.batch_execute(PINNED_SETTINGS).await
}
