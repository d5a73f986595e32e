//! `switchyard-proxy cutover <phase>|status|warm-up`: moves or shows the flag from the
//! command line, through the old database's control table (no running instance needed), or
//! warms new's buffer cache.

use std::process::ExitCode;
use std::time::Duration;
use switchyard_core::cutover::{self, FlipError, FlipRequest, Phase};
use switchyard_core::db::Db;
use switchyard_core::dsn::Dsn;

#[derive(Debug, clap::Args)]
pub struct CutoverArgs {
    /// The phase to move to (shadow, canary, reads-new, writes-new, done), `status`,
    /// `cancel` (withdraw a flip being confirmed; safe to repeat), or `warm-up` (load old's
    /// hot relations into new's buffer cache).
    pub phase: String,
    /// URL of the old database (holds the control table).
    #[arg(long, env = "SWITCHYARD_OLD")]
    pub old: String,
    /// URL of the new database (checked before reads move there).
    #[arg(long, env = "SWITCHYARD_NEW")]
    pub new: String,
    /// Share of sessions reading from new, for canary (0 to 100).
    #[arg(long, default_value_t = 0)]
    pub percent: u8,
    /// Run the pre-flight checks only (warm-up: show what would be loaded).
    #[arg(long)]
    pub dry_run: bool,
    /// Warm-up: share of new's shared_buffers to fill (1 to 100).
    #[arg(long, default_value_t = switchyard_core::cutover::warmup::DEFAULT_BUDGET_PERCENT,
          value_parser = clap::value_parser!(u8).range(1..=100))]
    pub budget_percent: u8,
    /// Seconds every instance gets to confirm (then to run the new epoch).
    #[arg(long, default_value_t = 10)]
    pub timeout_secs: u64,
    /// Seconds after which an instance not heard from is not live.
    #[arg(long, default_value_t = 5)]
    pub lease_secs: u64,
    /// A shadow mismatch confirmed this many seconds ago or later refuses moving reads to new.
    #[arg(long, default_value_t = 600)]
    pub mismatch_window_secs: u64,
    /// Refuse moving reads or writes to new while its buffer cache hit ratio is more than
    /// 5 points under old's (without it the ratios are only shown).
    #[arg(long)]
    pub require_warm: bool,
    /// The instances run `mirror.mode = "lockstep"` (no prepared transactions): the side
    /// that becomes the secondary need not allow them.
    #[arg(long)]
    pub lockstep: bool,
    /// With the Kafka retry log: its brokers, so that records not replayed yet count in
    /// the backlog check.
    #[arg(long)]
    pub kafka_brokers: Option<String>,
    #[arg(long, default_value = "switchyard.retry")]
    pub kafka_topic: String,
    /// The reconcilers' consumer group.
    #[arg(long, default_value = "switchyard-reconciler")]
    pub kafka_group: String,
    /// Name in the log and the timeline [default: cli@<host user>]
    #[arg(long)]
    pub by: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Exit status: 0 done, 1 refused or abandoned (nothing changed), 2 an error.
pub fn run(args: CutoverArgs) -> ExitCode {
    let runtime = match switchyard_core::tool::build_runtime(1) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("switchyard-proxy cutover: starting the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(run_async(args))
}

async fn connect(url: &str, db: Db) -> Result<tokio_postgres::Client, String> {
    let dsn = Dsn::parse(url).map_err(|e| format!("--{db}: {e}"))?;
    crate::mirror::control::connect(
        db,
        &dsn,
        "switchyard-cutover-cli",
        None,
        Duration::from_secs(10),
    )
    .await
    .map_err(|e| format!("the {db} database: {e}"))
}

async fn run_async(args: CutoverArgs) -> ExitCode {
    let fail = |e: String| {
        eprintln!("switchyard-proxy cutover: {e}");
        ExitCode::from(2)
    };
    let lease = Duration::from_secs(args.lease_secs.max(1));
    let old = match connect(&args.old, Db::Old).await {
        Ok(c) => c,
        Err(e) if args.phase == "status" => {
            // Old may be gone for good once the cutover is done: new has the flag then.
            let Ok(new) = connect(&args.new, Db::New).await else {
                return fail(e);
            };
            if !matches!(cutover::done::done_on(&new).await, Ok(Some(_))) {
                return fail(e);
            }
            new
        }
        Err(e) => return fail(e),
    };
    if args.phase == "warm-up" {
        let new = match connect(&args.new, Db::New).await {
            Ok(c) => c,
            Err(e) => return fail(e),
        };
        return super::warm::cli(&old, &new, args.budget_percent, args.dry_run, args.json).await;
    }
    if args.phase == "cancel" {
        let by = args.by.clone().unwrap_or_else(default_by);
        return match cutover::cancel(&old, &by).await {
            Ok(Some((to, epoch))) => {
                println!(
                    "withdrew the flip to {to} (epoch {epoch}); every instance stays where it was"
                );
                ExitCode::SUCCESS
            }
            Ok(None) => {
                println!("no flip is being confirmed");
                ExitCode::SUCCESS
            }
            Err(e) => fail(e.to_string()),
        };
    }
    if args.phase == "status" {
        // Once done, the flag lives on new (old may be gone).
        let new = connect(&args.new, Db::New).await.ok();
        let done_on_new = match &new {
            Some(n) => cutover::done::done_on(n).await.ok().flatten().is_some(),
            None => false,
        };
        let control = match (&new, done_on_new) {
            (Some(n), true) => n,
            _ => &old,
        };
        return match cutover::status(control, lease).await {
            Ok(s) if args.json => print_json(&s),
            Ok(s) => {
                println!(
                    "phase {} (epoch {}{}){}",
                    s.phase,
                    s.epoch,
                    if s.phase == "canary" {
                        format!(", {} % of sessions read from new", s.percent)
                    } else {
                        String::new()
                    },
                    if s.converged {
                        ", every live instance runs it"
                    } else {
                        ", NOT converged"
                    }
                );
                if let Some(p) = &s.proposed {
                    println!("being confirmed: {p}");
                }
                for i in &s.instances {
                    println!(
                        "  instance {:<24} {:<10} epoch {:<4} seen {:.1} s ago{}",
                        i.id,
                        i.phase,
                        i.epoch,
                        i.last_seen_secs,
                        if i.live { "" } else { " (not live)" }
                    );
                }
                for h in s.history.iter().take(10) {
                    println!(
                        "  {} {} → {} epoch {} by {}: {}{}",
                        h.at,
                        h.from,
                        h.to,
                        h.epoch,
                        h.by,
                        h.outcome,
                        if h.detail.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", h.detail)
                        }
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(e.to_string()),
        };
    }
    let to: Phase = match args.phase.parse() {
        Ok(p) => p,
        Err(e) => return fail(format!("{e}, or status, or warm-up")),
    };
    let new = match connect(&args.new, Db::New).await {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("switchyard-proxy cutover: {e} (its checks fail)");
            None
        }
    };
    let req = FlipRequest {
        to,
        percent: args.percent,
        by: args.by.unwrap_or_else(default_by),
        dry_run: args.dry_run,
        timeout: Duration::from_secs(args.timeout_secs.max(1)),
        lease,
        mismatch_window: Duration::from_secs(args.mismatch_window_secs),
        require_warm: args.require_warm,
        lockstep: args.lockstep,
        kafka: args.kafka_brokers.as_ref().map(|brokers| {
            switchyard_core::retry_kafka::KafkaSettings {
                brokers: brokers.clone(),
                topic: args.kafka_topic.clone(),
                group: args.kafka_group.clone(),
                ..Default::default()
            }
        }),
    };
    match cutover::flip(&old, new.as_ref(), &req).await {
        Ok(r) if args.json => print_json(&r),
        Ok(r) => {
            print!("{}", r.checks);
            if r.dry_run {
                println!("dry run: every check passed; nothing changed");
            } else {
                println!(
                    "{} → {}: epoch {}, confirmed by every live instance in {} ms{}",
                    r.from,
                    r.to,
                    r.epoch,
                    r.confirm_ms,
                    if r.converged {
                        ""
                    } else {
                        " (not every instance reported it yet)"
                    }
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            if args.json {
                let _ = print_json(&serde_json::json!({
                    "error": e.to_string(),
                    "checks": e.checks(),
                }));
            } else {
                if let Some(c) = e.checks() {
                    eprint!("{c}");
                }
                eprintln!("switchyard-proxy cutover: {e}");
            }
            match e {
                FlipError::Db(_) | FlipError::Invalid(_) => ExitCode::from(2),
                _ => ExitCode::from(1),
            }
        }
    }
}

fn print_json(v: &impl serde::Serialize) -> ExitCode {
    match serde_json::to_string_pretty(v) {
        Ok(s) => {
            println!("{s}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("switchyard-proxy cutover: {e}");
            ExitCode::from(2)
        }
    }
}

/// Who moved the flag when `--by` is not given.
fn default_by() -> String {
    format!(
        "cli@{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    )
}
