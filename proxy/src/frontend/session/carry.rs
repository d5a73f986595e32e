//! What a session has set up on its server process that its next server process must have
//! too when the cutover moves it: every session-level `SET` (not only the ones shadow reads
//! replay), `LISTEN` channels and SQL-level `PREPARE`d statements. Followed from the
//! statements the client sends; replayed, in that order, on the connection the session
//! moves to. Protocol-level prepared statements are carried by their Parse messages (see
//! `Route::parses`).
//!
//! Not followed: values set through `set_config()` and state a rolled-back transaction
//! undid (such a `SET` or `LISTEN` is replayed anyway).

use crate::classify::{Classified, StatementClass};
use pg_query::protobuf::{DiscardMode, VariableSetKind};
use pg_query::NodeEnum;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Carry {
    /// Setting name (lower case) and the statement that set it, in the order they were set.
    sets: Vec<(String, String)>,
    /// Channels, in the order the session listened to them.
    listens: Vec<String>,
    /// Statement name and its `PREPARE` text.
    prepares: Vec<(String, String)>,
}

impl Carry {
    /// Follows one string the client sent (already classified); parses it again only when
    /// it holds a session statement.
    pub(crate) fn observe(&mut self, sql: &str, classes: &[Classified]) {
        if !classes.iter().any(|c| c.class == StatementClass::Session) {
            return;
        }
        let Ok(parsed) = pg_query::parse(sql, 0) else {
            return;
        };
        for raw in &parsed.protobuf.stmts {
            let Some(node) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) else {
                continue;
            };
            let text = || statement_text(sql, raw.stmt_location, raw.stmt_len);
            match node {
                // `SET TRANSACTION` belongs to the transaction it runs in.
                NodeEnum::VariableSetStmt(v) if !v.is_local && v.name != "TRANSACTION" => {
                    let name = v.name.to_ascii_lowercase();
                    if v.kind == VariableSetKind::VarResetAll as i32 {
                        self.sets.clear();
                    } else if v.kind == VariableSetKind::VarReset as i32
                        || v.kind == VariableSetKind::VarSetDefault as i32
                    {
                        self.sets.retain(|(n, _)| *n != name);
                    } else {
                        self.sets.retain(|(n, _)| *n != name);
                        self.sets.push((name, text()));
                    }
                }
                NodeEnum::ListenStmt(l) if !self.listens.contains(&l.conditionname) => {
                    self.listens.push(l.conditionname.clone());
                }
                NodeEnum::UnlistenStmt(u) if u.conditionname.is_empty() => self.listens.clear(),
                NodeEnum::UnlistenStmt(u) => self.listens.retain(|c| *c != u.conditionname),
                NodeEnum::PrepareStmt(p) => {
                    self.prepares.retain(|(n, _)| *n != p.name);
                    self.prepares.push((p.name.clone(), text()));
                }
                NodeEnum::DeallocateStmt(d) if d.isall || d.name.is_empty() => {
                    self.prepares.clear()
                }
                NodeEnum::DeallocateStmt(d) => self.prepares.retain(|(n, _)| *n != d.name),
                NodeEnum::DiscardStmt(d) if d.target == DiscardMode::DiscardAll as i32 => {
                    *self = Carry::default();
                }
                _ => {}
            }
        }
    }

    /// The statements that rebuild this state on a fresh server process: settings first
    /// (a prepared statement resolves names under the session's `search_path`).
    pub(crate) fn statements(&self) -> Vec<String> {
        let sets = self.sets.iter().map(|(_, s)| s.clone());
        let prepares = self.prepares.iter().map(|(_, s)| s.clone());
        let listens = self
            .listens
            .iter()
            .map(|c| format!("LISTEN {}", quote_ident(c)));
        sets.chain(prepares).chain(listens).collect()
    }
}

fn statement_text(sql: &str, location: i32, len: i32) -> String {
    let start = usize::try_from(location).unwrap_or(0).min(sql.len());
    let end = match usize::try_from(len) {
        Ok(0) | Err(_) => sql.len(),
        Ok(n) => (start + n).min(sql.len()),
    };
    sql.get(start..end)
        .unwrap_or(sql)
        .trim()
        .trim_end_matches(';')
        .to_string()
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::classify_uncached;

    fn run(carry: &mut Carry, sql: &str) {
        carry.observe(sql, &classify_uncached(sql));
    }

    #[test]
    fn follows_settings_listens_and_prepares_in_order() {
        let mut c = Carry::default();
        run(&mut c, "SET statement_timeout = '5s'");
        run(
            &mut c,
            "BEGIN; SET LOCAL work_mem = '1MB'; SET search_path TO app, public; COMMIT",
        );
        run(&mut c, "LISTEN jobs; LISTEN \"Mixed\"");
        run(&mut c, "PREPARE q(int) AS SELECT $1 + 1");
        run(&mut c, "SET statement_timeout TO 0");
        run(
            &mut c,
            "BEGIN; SET TRANSACTION ISOLATION LEVEL SERIALIZABLE; COMMIT",
        );
        assert_eq!(
            c.statements(),
            vec![
                "SET search_path TO app, public",
                "SET statement_timeout TO 0",
                "PREPARE q(int) AS SELECT $1 + 1",
                "LISTEN \"jobs\"",
                "LISTEN \"Mixed\"",
            ]
        );
        run(&mut c, "UNLISTEN jobs; DEALLOCATE q; RESET search_path");
        assert_eq!(
            c.statements(),
            vec!["SET statement_timeout TO 0", "LISTEN \"Mixed\""]
        );
        run(&mut c, "UNLISTEN *");
        run(&mut c, "RESET ALL");
        assert!(c.statements().is_empty());
    }

    #[test]
    fn discard_all_forgets_everything_and_reads_are_not_parsed() {
        let mut c = Carry::default();
        run(
            &mut c,
            "SET application_name = 'x'; LISTEN a; PREPARE p AS SELECT 1",
        );
        assert_eq!(c.statements().len(), 3);
        run(&mut c, "DISCARD ALL");
        assert_eq!(c, Carry::default());
        // A string classified without session statements is not looked at.
        c.observe("SET x.y = 1", &classify_uncached("SELECT 1"));
        assert!(c.statements().is_empty());
        run(&mut c, "DEALLOCATE ALL");
        run(&mut c, "SET x.y = 1");
        assert_eq!(c.statements(), vec!["SET x.y = 1"]);
    }
}
