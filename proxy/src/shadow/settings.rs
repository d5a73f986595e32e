//! The session settings a shadow read must run under: those that change what a query sees
//! or how values print. Tracked from the server's startup ParameterStatus and the client's
//! `SET`/`RESET`/`DISCARD ALL`, and replayed on both sides inside the shadow transaction
//! (whose ROLLBACK undoes them, so pooled shadow connections never keep a session's state).

use pg_query::protobuf::{DiscardMode, VariableSetKind};
use pg_query::NodeEnum;
use std::sync::Arc;

/// Settings replayed on the shadow side. Anything else (roles, read-only flags, timeouts)
/// is either the shadow's own business or not something a read result depends on.
const TRACKED: &[&str] = &[
    "search_path",
    "timezone",
    "datestyle",
    "intervalstyle",
    "extra_float_digits",
    "bytea_output",
    "lc_monetary",
    "lc_numeric",
    "lc_time",
    "standard_conforming_strings",
    "default_text_search_config",
    "xmloption",
];

/// ParameterStatus names worth taking from the session's startup (the server reports these
/// with the client's startup options applied).
const FROM_STARTUP: &[&str] = &["TimeZone", "DateStyle", "IntervalStyle"];

/// One session's tracked settings, as SQL statements to replay in order.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    entries: Vec<(String, String)>,
    replay: Arc<[String]>,
}

impl Settings {
    /// Starts from the server's ParameterStatus at the session's startup.
    pub fn from_startup(params: &[(String, String)]) -> Self {
        let mut s = Settings::default();
        for (name, value) in params {
            if FROM_STARTUP.contains(&name.as_str()) {
                let stmt = format!("SET {} TO {}", quote_ident(name), quote_literal(value));
                s.entries.push((name.to_ascii_lowercase(), stmt));
            }
        }
        s.rebuild();
        s
    }

    /// The statements to replay, cheap to clone into a job.
    pub fn replay(&self) -> Arc<[String]> {
        self.replay.clone()
    }

    /// Looks at one session statement the client ran; true if it changed tracked state.
    /// `SET LOCAL` is ignored: only autocommit reads are shadowed, and a transaction-local
    /// value is gone by then.
    pub fn observe(&mut self, sql: &str) -> bool {
        let head = sql.trim_start().as_bytes();
        let starts = |w: &[u8]| head.len() >= w.len() && head[..w.len()].eq_ignore_ascii_case(w);
        if !(starts(b"set") || starts(b"reset") || starts(b"discard")) {
            return false;
        }
        let Ok(parsed) = pg_query::parse(sql, 0) else {
            return false;
        };
        let stmts = &parsed.protobuf.stmts;
        if stmts.len() != 1 {
            return false;
        }
        let changed = match stmts[0].stmt.as_ref().and_then(|n| n.node.as_ref()) {
            Some(NodeEnum::VariableSetStmt(v)) if !v.is_local => {
                let name = v.name.to_ascii_lowercase();
                let kind = v.kind;
                if kind == VariableSetKind::VarResetAll as i32 {
                    self.entries.clear();
                    true
                } else if !TRACKED.contains(&name.as_str()) {
                    false
                } else if kind == VariableSetKind::VarSetValue as i32 {
                    self.entries.retain(|(n, _)| *n != name);
                    let text = sql.trim().trim_end_matches(';').trim().to_string();
                    self.entries.push((name, text));
                    true
                } else if kind == VariableSetKind::VarReset as i32
                    || kind == VariableSetKind::VarSetDefault as i32
                {
                    self.entries.retain(|(n, _)| *n != name);
                    true
                } else {
                    false
                }
            }
            Some(NodeEnum::DiscardStmt(d)) if d.target == DiscardMode::DiscardAll as i32 => {
                self.entries.clear();
                true
            }
            _ => false,
        };
        if changed {
            self.rebuild();
        }
        changed
    }

    fn rebuild(&mut self) {
        self.replay = self.entries.iter().map(|(_, s)| s.clone()).collect();
    }
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_then_set_reset_discard() {
        let mut s = Settings::from_startup(&[
            ("TimeZone".into(), "Europe/O'Land".into()),
            ("server_version".into(), "15".into()),
        ]);
        assert_eq!(
            &*s.replay(),
            &["SET \"TimeZone\" TO 'Europe/O''Land'".to_string()]
        );
        assert!(s.observe("set search_path = app, public;"));
        assert!(s.observe("SET TimeZone TO 'UTC'"));
        assert_eq!(
            &*s.replay(),
            &[
                "set search_path = app, public".to_string(),
                "SET TimeZone TO 'UTC'".to_string()
            ]
        );
        assert!(
            !s.observe("SET LOCAL search_path = x"),
            "local values are ignored"
        );
        assert!(!s.observe("SET role = admin"), "not a tracked setting");
        assert!(!s.observe("SET search_path = a; SELECT 1"));
        assert!(s.observe("RESET search_path"));
        assert_eq!(s.replay().len(), 1);
        assert!(s.observe("DISCARD ALL"));
        assert!(s.replay().is_empty());
        assert!(!s.observe("SELECT 1"));
    }
}
