//! Sequences before the write flip, on real clusters: rows written through the proxy reach
//! new with old's ids while new's sequences (serial, identity, a descending one, one in a
//! schema whose name needs quoting) stay where they were; `behind` lists them, `advance`
//! moves them past old's, after which new hands out ids old never did; and back the other
//! way. A sequence missing on new is reported, one that would pass its MAXVALUE is refused
//! by name, and a thousand sequences are moved in a few statements.

use anyhow::{ensure, Context, Result};
use std::time::{Duration, Instant};
use switchyard_core::cutover::sequences::{advance, behind, SequenceError, SequenceMove};
use switchyard_tests::mirror::{eventually, init_tracing, on, pair_with};
use switchyard_tests::proxy::{connect_proxy, start_proxy, Pair, DB};
use tokio_postgres::Client;

const SCHEMA: &str = r#"
CREATE TABLE s (id serial PRIMARY KEY, v text);
CREATE TABLE i (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);
CREATE SEQUENCE down_seq INCREMENT BY -1 MINVALUE -1000000 MAXVALUE -1 START WITH -1;
CREATE TABLE d (id int PRIMARY KEY DEFAULT nextval('down_seq'), v text);
CREATE SCHEMA "App Data";
CREATE SEQUENCE "App Data"."Odd ""seq""" START WITH 1000;
"#;

const ODD: &str = r#""App Data"."Odd ""seq""""#;

async fn int(c: &Client, sql: &str) -> Result<i64> {
    let row = c
        .query_one(sql, &[])
        .await
        .with_context(|| sql.to_string())?;
    Ok(row.get(0))
}

fn find<'a>(moves: &'a [SequenceMove], name: &str) -> Result<&'a SequenceMove> {
    moves
        .iter()
        .find(|m| m.name == name)
        .with_context(|| format!("{name} not among {moves:?}"))
}

async fn sorted_behind(source: &Client, target: &Client) -> Result<Vec<String>> {
    let mut names = behind(source, target).await?;
    names.sort();
    Ok(names)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_sequences_move_past_old_after_dual_writes_and_back() -> Result<()> {
    init_tracing();
    let pair = pair_with(SCHEMA).await?;
    on(
        &pair.old,
        "CREATE SEQUENCE only_on_old; SELECT nextval('only_on_old')",
    )?;
    let proxy = start_proxy(pair.config()).await?;
    let app = connect_proxy(&proxy).await?;
    for table in ["s", "i", "d"] {
        app.batch_execute(&format!(
            "INSERT INTO {table} (v) SELECT 'row ' || g FROM generate_series(1, 40) g"
        ))
        .await?;
    }
    let old = pair.old.connect(DB).await?;
    let new = pair.new.connect(DB).await?;
    for _ in 0..3 {
        int(
            &old,
            &format!("SELECT nextval('{}')", ODD.replace('\'', "''")),
        )
        .await?;
    }
    for table in ["s", "i", "d"] {
        eventually(&pair.new, &format!("SELECT count(*) FROM {table}"), "40")?;
    }
    // The rows arrived with old's ids; new's sequences did not move.
    ensure!(
        int(&new, "SELECT max(id)::int8 FROM s").await? == 40
            && int(&new, "SELECT min(id)::int8 FROM d").await? == -40
    );
    let lagging = sorted_behind(&old, &new).await?;
    let want = [
        "App Data.Odd \"seq\"",
        "public.down_seq",
        "public.i_id_seq",
        "public.s_id_seq",
    ];
    ensure!(lagging == want, "behind before advance: {lagging:?}");

    let moves = advance(&old, &new, 100).await?;
    let s = find(&moves, "public.s_id_seq")?;
    ensure!(
        s.moved
            && s.source_value == Some(40)
            && s.target_before.is_none()
            && s.target_next == Some(141),
        "{s:?}"
    );
    ensure!(find(&moves, "public.i_id_seq")?.target_next == Some(141));
    let d = find(&moves, "public.down_seq")?;
    ensure!(
        d.moved && d.source_value == Some(-40) && d.target_next == Some(-141),
        "{d:?}"
    );
    let odd = find(&moves, "App Data.Odd \"seq\"")?;
    ensure!(
        odd.source_value == Some(1002) && odd.target_next == Some(1103),
        "{odd:?}"
    );
    let missing = find(&moves, "public.only_on_old")?;
    ensure!(
        missing.missing_on_target && !missing.moved && missing.target_name.is_none(),
        "{missing:?}"
    );

    // New now hands out what old never did, read back from both.
    for table in ["s", "i"] {
        let got = int(
            &new,
            &format!("INSERT INTO {table} (v) VALUES ('on new') RETURNING id::int8"),
        )
        .await?;
        let old_max = int(&old, &format!("SELECT max(id)::int8 FROM {table}")).await?;
        ensure!(
            got == 141 && got > old_max,
            "{table}: new gave {got}, old's max is {old_max}"
        );
    }
    let got = int(
        &new,
        "INSERT INTO d (v) VALUES ('on new') RETURNING id::int8",
    )
    .await?;
    let old_min = int(&old, "SELECT min(id)::int8 FROM d").await?;
    ensure!(
        got == -141 && got < old_min,
        "d: new gave {got}, old's min is {old_min}"
    );
    let odd_sql = format!("SELECT nextval('{}')", ODD.replace('\'', "''"));
    let got = int(&new, &odd_sql).await?;
    let old_last = int(&old, &format!("SELECT last_value FROM {ODD}")).await?;
    ensure!(
        got == 1103 && got > old_last,
        "odd: {got} vs old's {old_last}"
    );
    ensure!(sorted_behind(&old, &new).await?.is_empty());
    let again = advance(&old, &new, 100).await?;
    ensure!(
        again.iter().all(|m| !m.moved),
        "nothing moves twice: {again:?}"
    );

    // Going back: old must pass what new handed out meanwhile.
    let lagging = sorted_behind(&new, &old).await?;
    ensure!(lagging == want, "old behind new: {lagging:?}");
    advance(&new, &old, 0).await?;
    ensure!(sorted_behind(&new, &old).await?.is_empty());
    let got = int(&old, "SELECT nextval('s_id_seq')").await?;
    ensure!(got == 142, "old's next serial after new's 141: {got}");
    let got = int(&old, "SELECT nextval('down_seq')").await?;
    ensure!(
        got == -142,
        "old's next descending value after new's -141: {got}"
    );
    Ok(())
}

/// Two clusters with `sql` run on both, no proxy.
async fn bare_pair(sql: &str) -> Result<(Pair, Client, Client)> {
    let pair = tokio::task::spawn_blocking(Pair::start).await??;
    on(&pair.old, sql)?;
    on(&pair.new, sql)?;
    let old = pair.old.connect(DB).await?;
    let new = pair.new.connect(DB).await?;
    Ok((pair, old, new))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequence_that_would_pass_its_bound_is_refused_by_name() -> Result<()> {
    let (pair, old, new) = bare_pair("CREATE SEQUENCE tiny MAXVALUE 10").await?;
    on(&pair.old, "SELECT setval('tiny', 8)")?;
    // Margin 0 fits (new hands out 9 next)...
    let moves = advance(&old, &new, 0).await?;
    ensure!(find(&moves, "public.tiny")?.target_next == Some(9));
    // ...5 more steps do not, and nothing on new changes.
    match advance(&old, &new, 5).await {
        Err(e @ SequenceError::Exhausted { .. }) => {
            ensure!(e.to_string().contains("public.tiny"), "{e}")
        }
        other => anyhow::bail!("expected a refusal naming public.tiny, got {other:?}"),
    }
    ensure!(int(&new, "SELECT nextval('tiny')").await? == 9);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sequences_move_in_a_few_statements() -> Result<()> {
    const N: i64 = 1200;
    let create = format!(
        "DO $$ BEGIN FOR k IN 1..{N} LOOP EXECUTE format('CREATE SEQUENCE seq_%s', k); \
         END LOOP; END $$"
    );
    let (pair, old, new) = bare_pair(&create).await?;
    // Each at its own position on old, to catch a batch's rows landing on the wrong sequence.
    on(
        &pair.old,
        &format!("SELECT setval(format('seq_%s', k), k * 7) FROM generate_series(1, {N}) k"),
    )?;
    ensure!(behind(&old, &new).await?.len() == N as usize);
    let started = Instant::now();
    let moves = advance(&old, &new, 1).await?;
    let took = started.elapsed();
    ensure!(moves.iter().filter(|m| m.moved).count() == N as usize);
    // Every sequence on new, read from its relation, against its own position on old.
    let all = (1..=N)
        .map(|k| format!("SELECT {k} AS k, last_value, is_called FROM seq_{k}"))
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    let wrong = int(
        &new,
        &format!("SELECT count(*) FROM ({all}) x WHERE last_value <> k * 7 + 2 OR is_called"),
    )
    .await?;
    ensure!(
        wrong == 0,
        "{wrong} sequences on new not set to old's next value + 1"
    );
    // Read every sequence's next value on new against old's last value.
    for k in [1, 499, 500, 501, 1000, N] {
        let got = int(&new, &format!("SELECT nextval('seq_{k}')")).await?;
        ensure!(
            got == k * 7 + 2,
            "seq_{k}: new hands out {got}, old's last is {}",
            k * 7
        );
    }
    ensure!(
        took < Duration::from_secs(20),
        "moving {N} sequences took {took:?}"
    );
    Ok(())
}
