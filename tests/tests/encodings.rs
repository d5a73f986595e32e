//! Sessions in client encodings other than UTF8 while dual writes run: statements the
//! proxy splits or notes go to the server in the session's encoding, captured rows come
//! back whole, and old and new end equal row by row with nothing replayed. Encodings the
//! proxy cannot read are refused with a clear error, at startup and on `SET`.

use anyhow::{ensure, Result};
use std::path::Path;
use std::time::Duration;
use switchyard_tests::clients::{psql_bin, python_bin, python_script, run_client};
use switchyard_tests::mirror::{
    assert_same, init_tracing, on, pair_with, proxied, retry_records, Proxied,
};
use switchyard_tests::proxy::{batch_fails, connect_proxy, proxy_url, start_proxy};
use tokio_postgres::error::SqlState;

const SCHEMA: &str = "CREATE TABLE enc (id int PRIMARY KEY, src text, v text);
    CREATE TABLE audit (n serial PRIMARY KEY, id int, v text);
    CREATE FUNCTION audit_enc() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN INSERT INTO audit (id, v) VALUES (NEW.id, 'audité: ' || NEW.v); RETURN NEW; END $$;
    CREATE TRIGGER enc_audit AFTER INSERT ON enc FOR EACH ROW EXECUTE FUNCTION audit_enc();";

/// psql running `script` (bytes in `encoding`) through the proxy.
async fn psql_in(url: &str, encoding: &str, dir: &Path, script: &[u8]) -> Result<()> {
    let file = dir.join(format!("{encoding}.sql"));
    std::fs::write(&file, script)?;
    let mut psql = tokio::process::Command::new(psql_bin());
    psql.args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", url, "-f"])
        .arg(&file)
        .env("PGCLIENTENCODING", encoding);
    let out = run_client(&mut psql, "psql", Duration::from_secs(60)).await?;
    ensure!(out.status.success(), "psql in {encoding}: {out:?}");
    Ok(())
}

fn latin1(s: &str) -> Vec<u8> {
    s.chars()
        .map(|c| u8::try_from(u32::from(c)).expect("LATIN1"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_in_other_client_encodings_mirror_exactly() -> Result<()> {
    init_tracing();
    let python = python_bin()?;
    let pair = pair_with(SCHEMA).await?;
    let proxy = start_proxy(pair.config()).await?;
    let url = proxy_url(&proxy, "postgres");
    let dir = tempfile::tempdir()?;

    // LATIN1 bytes, simple protocol: one statement, a string of several (the proxy splits
    // it and sends each piece in LATIN1), DDL with a non-ASCII default (noted in the
    // session and run on new from the note), an update.
    let script = latin1(
        "INSERT INTO enc VALUES (1, 'psql', 'café');\n\
         INSERT INTO enc VALUES (2, 'psql', 'crème') \\; BEGIN \\; INSERT INTO enc VALUES (3, 'psql', 'brûlée') \\; COMMIT;\n\
         ALTER TABLE enc ADD COLUMN note text DEFAULT 'naïve';\n\
         UPDATE enc SET note = 'señor ' || v WHERE id <= 2;\n",
    );
    psql_in(&url, "LATIN1", dir.path(), &script).await?;
    // EUC_JP: multibyte, the same shapes.
    let euc = |s: &str| encoding_rs::EUC_JP.encode(s).0.into_owned();
    psql_in(
        &url,
        "EUC_JP",
        dir.path(),
        &euc("INSERT INTO enc VALUES (4, 'psql', '日本語');\n\
              INSERT INTO enc VALUES (5, 'psql', 'ｶﾀｶﾅ') \\; UPDATE enc SET note = '注記' WHERE id = 4;\n"),
    )
    .await?;
    // SQL_ASCII over a UTF8 database: the bytes are UTF-8 already.
    psql_in(
        &url,
        "SQL_ASCII",
        dir.path(),
        "INSERT INTO enc VALUES (6, 'psql', 'ünïcödé') \\; INSERT INTO enc VALUES (7, 'psql', 'ascii');\n"
            .as_bytes(),
    )
    .await?;
    // psycopg, extended protocol, LATIN1 / WIN1252 / EUC_JP parameters.
    let script = python_script("encodings.py");
    let mut py = tokio::process::Command::new(&python);
    py.arg(&script).arg(&url);
    let out = run_client(&mut py, "encodings.py", Duration::from_secs(120)).await?;
    ensure!(
        out.status.success() && out.stdout.contains("encodings: all checks passed"),
        "{out:?}"
    );

    let old = on(
        &pair.old,
        "SELECT string_agg(id || '=' || v || '/' || coalesce(note, '-'), ',' ORDER BY id) FROM enc WHERE id <= 7",
    )?;
    ensure!(
        old == "1=café/señor café,2=crème/señor crème,3=brûlée/naïve,4=日本語/注記,5=ｶﾀｶﾅ/naïve,6=ünïcödé/naïve,7=ascii/naïve",
        "old holds {old}"
    );
    tokio::task::block_in_place(|| assert_same(&pair, &["enc", "audit"]))?;
    ensure!(
        tokio::task::block_in_place(|| retry_records(&pair))? == 0,
        "writes queued for replay"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encodings_the_proxy_cannot_read_are_refused_clearly() -> Result<()> {
    let Proxied { pair, proxy } = proxied(SCHEMA).await?;
    let url = proxy_url(&proxy, "postgres");
    let mut psql = tokio::process::Command::new(psql_bin());
    psql.args([
        "-X",
        "-At",
        &url,
        "-c",
        "INSERT INTO enc VALUES (1, 'x', 'x')",
    ])
    .env("PGCLIENTENCODING", "EUC_TW");
    let out = run_client(&mut psql, "psql", Duration::from_secs(30)).await?;
    ensure!(!out.status.success(), "psql in EUC_TW got through: {out:?}");
    ensure!(
        out.stderr
            .contains("dual writes cannot read client_encoding EUC_TW"),
        "{}",
        out.stderr
    );
    ensure!(on(&pair.old, "SELECT count(*) FROM enc")? == "0");

    let c = connect_proxy(&proxy).await?;
    c.batch_execute("INSERT INTO enc VALUES (2, 'utf8', 'été')")
        .await?;
    batch_fails(
        &c,
        "SET client_encoding = 'EUC_TW'",
        &SqlState::FEATURE_NOT_SUPPORTED,
    )
    .await?;
    ensure!(
        c.batch_execute("INSERT INTO enc VALUES (3, 'z', 'z')")
            .await
            .is_err(),
        "the session still runs statements"
    );
    tokio::task::block_in_place(|| assert_same(&pair, &["enc", "audit"]))?;
    let rows = on(&pair.old, "SELECT id FROM enc")?;
    ensure!(rows == "2", "{rows}");
    Ok(())
}
