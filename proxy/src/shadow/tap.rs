//! The part of shadow reads that runs in a client session, on the client's path. It only
//! remembers the session's read statements and settings, decides by sampling, copies a
//! sampled statement and hands it to the queue with `try_send`. No parsing of reads, no
//! waiting, no I/O: analysis and execution happen in the workers.
//!
//! Only statements the session runs outside a transaction block are sampled: inside one,
//! the result depends on the transaction's own earlier statements and snapshot, which the
//! shadow cannot reproduce.

use super::job::Job;
use super::settings::Settings;
use super::Shadow;
use crate::classify::{Classified, StatementClass};
use crate::protocol::frontend::{bind_names, execute_portal, FrontendMessage};
use crate::protocol::Frame;
use crate::NameMap;
use bytes::Bytes;
use std::sync::Arc;

/// A prepared read statement: what a later Execute needs to replay it.
#[derive(Debug)]
struct Prepared {
    sql: Arc<str>,
    param_types: Vec<i32>,
    fingerprint: u64,
}

/// One session's shadow bookkeeping.
pub struct ShadowTap {
    shadow: Arc<Shadow>,
    settings: Settings,
    statements: NameMap<Arc<Prepared>>,
    /// Bound portals of read statements: the statement and the Bind as the client sent it.
    portals: NameMap<(Arc<Prepared>, Frame)>,
}

/// The single read statement in `classes`, if that is what it is.
fn single_read(classes: &[Classified]) -> Option<&Classified> {
    match classes {
        [c] if c.class == StatementClass::Read && c.parsed => Some(c),
        _ => None,
    }
}

impl ShadowTap {
    /// `startup_params` are the ParameterStatus values the session's server reported.
    pub fn new(shadow: Arc<Shadow>, startup_params: &[(String, String)]) -> Self {
        ShadowTap {
            shadow,
            settings: Settings::from_startup(startup_params),
            statements: NameMap::default(),
            portals: NameMap::default(),
        }
    }

    /// A simple Query. `idle` reports whether the session is outside a transaction block.
    pub fn query(&mut self, sql: &str, classes: &[Classified], idle: impl FnOnce() -> bool) {
        if let Some(c) = single_read(classes) {
            if !idle() {
                return;
            }
            if let Some(kind) = self.shadow.decide_with_room(c.fingerprint) {
                self.shadow.submit(Job {
                    kind,
                    fingerprint: c.fingerprint,
                    sql: Arc::from(sql),
                    param_types: Vec::new(),
                    param_formats: Vec::new(),
                    params: Vec::new(),
                    settings: self.settings.replay(),
                    attempt: 0,
                    first_mismatch: None,
                });
            }
        } else if let [c] = classes {
            if c.class == StatementClass::Session {
                self.settings.observe(sql);
            }
        }
    }

    /// A Parse: remember read statements, forget whatever the name held before.
    pub fn parse(&mut self, frame: &Frame, classes: &[Classified]) {
        if self.holds_already(&frame.body(), classes) {
            return;
        }
        let Ok(FrontendMessage::Parse {
            name,
            query,
            param_types,
        }) = FrontendMessage::decode(frame)
        else {
            return;
        };
        match single_read(classes) {
            Some(c) => {
                let p = Arc::new(Prepared {
                    sql: Arc::from(query.as_str()),
                    param_types,
                    fingerprint: c.fingerprint,
                });
                self.statements.insert(name, p);
            }
            None => {
                self.statements.remove(&name);
            }
        }
    }

    /// Whether the Parse `body` names a read statement this tap holds already, with the same
    /// text and parameter types: drivers parse the unnamed statement again for every
    /// execution, and copying it each time would cost more than the comparison.
    fn holds_already(&self, body: &[u8], classes: &[Classified]) -> bool {
        let Some(c) = single_read(classes) else {
            return false;
        };
        let mut parts = body.splitn(3, |&b| b == 0);
        let (Some(name), Some(sql), Some(types)) = (parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        let Some(p) = std::str::from_utf8(name)
            .ok()
            .and_then(|n| self.statements.get(n))
        else {
            return false;
        };
        let Some((count, oids)) = types.split_first_chunk::<2>() else {
            return false;
        };
        p.fingerprint == c.fingerprint
            && p.sql.as_bytes() == sql
            && usize::from(u16::from_be_bytes(*count)) == p.param_types.len()
            && oids.len() == 4 * p.param_types.len()
            && oids
                .chunks_exact(4)
                .zip(&p.param_types)
                .all(|(o, t)| i32::from_be_bytes([o[0], o[1], o[2], o[3]]) == *t)
    }

    /// A Bind: keep the message (cheap: it shares the read buffer) for a read statement.
    pub fn bind(&mut self, frame: &Frame) {
        let Ok((portal, statement)) = bind_names(frame) else {
            return;
        };
        match self.statements.get(statement) {
            Some(p) => {
                let entry = (p.clone(), frame.clone());
                self.portals.insert(portal.to_string(), entry);
            }
            None => {
                self.portals.remove(portal);
            }
        }
    }

    /// An Execute: the moment a bound read runs; sampled at most once per portal (a portal
    /// fetched in pieces with a row limit is one statement).
    pub fn execute(&mut self, frame: &Frame, idle: impl FnOnce() -> bool) {
        let Ok(portal) = execute_portal(frame) else {
            return;
        };
        let Some((prepared, bind)) = self.portals.remove(portal) else {
            return;
        };
        if !idle() {
            return;
        }
        let Some(kind) = self.shadow.decide_with_room(prepared.fingerprint) else {
            return;
        };
        let Ok(FrontendMessage::Bind(b)) = FrontendMessage::decode(&bind) else {
            return;
        };
        // Copies, so a queued job does not pin the client's read buffer.
        let params = b
            .params
            .iter()
            .map(|p| p.as_ref().map(|v| Bytes::copy_from_slice(v)))
            .collect();
        self.shadow.submit(Job {
            kind,
            fingerprint: prepared.fingerprint,
            sql: prepared.sql.clone(),
            param_types: prepared.param_types.clone(),
            param_formats: b.param_formats,
            params,
            settings: self.settings.replay(),
            attempt: 0,
            first_mismatch: None,
        });
    }

    /// A Close of a statement (`b'S'`) or portal.
    pub fn close(&mut self, kind: u8, name: &str) {
        if kind == b'S' {
            self.statements.remove(name);
        } else {
            self.portals.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::ConnectOptions;
    use crate::classify::classify_uncached;
    use crate::protocol::frontend::{Bind, FrontendMessage};
    use bytes::BytesMut;
    use switchyard_core::dsn::Dsn;
    use tokio::sync::mpsc::Receiver;

    fn shadow(queue_size: usize) -> (Arc<Shadow>, Receiver<Job>) {
        let dsn = Dsn::parse("postgres://u@127.0.0.1:1/db").expect("url");
        let config = super::super::ShadowConfig {
            sample_rate: 1.0,
            queue_size,
            ..Default::default()
        };
        let opts = ConnectOptions {
            timeout: std::time::Duration::from_secs(1),
            max_message_size: 1 << 20,
        };
        let s = Shadow::new(&config, &dsn, &dsn, opts).expect("enabled");
        let rx = s.rx.lock().expect("lock").take().expect("receiver");
        (s, rx)
    }

    fn frame(m: FrontendMessage) -> Frame {
        let mut b = BytesMut::new();
        m.encode(&mut b);
        Frame::parse(&mut b, 1 << 20)
            .expect("valid")
            .expect("whole")
    }

    #[test]
    fn extended_reads_are_replayed_as_bound_once_per_portal() {
        let (s, mut rx) = shadow(16);
        let mut tap = ShadowTap::new(s, &[("TimeZone".into(), "UTC".into())]);
        let sql = "SELECT * FROM t WHERE id = $1";
        let parse = frame(FrontendMessage::Parse {
            name: "s1".into(),
            query: sql.into(),
            param_types: vec![23],
        });
        tap.parse(&parse, &classify_uncached(sql));
        let bind = frame(FrontendMessage::Bind(Bind {
            portal: String::new(),
            statement: "s1".into(),
            param_formats: vec![1],
            params: vec![Some(Bytes::from_static(&[0, 0, 0, 7]))],
            result_formats: vec![1],
        }));
        let exec = frame(FrontendMessage::Execute {
            portal: String::new(),
            max_rows: 1,
        });
        tap.bind(&bind);
        tap.execute(&exec, || true);
        tap.execute(&exec, || true);
        let job = rx.try_recv().expect("sampled");
        assert_eq!(&*job.sql, sql);
        assert_eq!(job.param_types, vec![23]);
        assert_eq!(job.param_formats, vec![1]);
        assert_eq!(job.params, vec![Some(Bytes::from_static(&[0, 0, 0, 7]))]);
        assert_eq!(&*job.settings, &["SET \"TimeZone\" TO 'UTC'".to_string()]);
        assert!(
            rx.try_recv().is_err(),
            "a portal fetched in pieces is one sample"
        );

        tap.bind(&bind);
        tap.execute(&exec, || false);
        assert!(rx.try_recv().is_err(), "not inside a transaction block");

        tap.close(b'S', "s1");
        tap.bind(&bind);
        tap.execute(&exec, || true);
        assert!(rx.try_recv().is_err(), "a closed statement is forgotten");
    }

    #[test]
    fn a_statement_parsed_again_is_replaced_unless_it_is_the_same() {
        let (s, mut rx) = shadow(16);
        let mut tap = ShadowTap::new(s, &[]);
        let run = |tap: &mut ShadowTap, sql: &str, types: Vec<i32>| {
            let parse = frame(FrontendMessage::Parse {
                name: String::new(),
                query: sql.into(),
                param_types: types,
            });
            tap.parse(&parse, &classify_uncached(sql));
            tap.bind(&frame(FrontendMessage::Bind(Bind {
                portal: String::new(),
                statement: String::new(),
                param_formats: vec![],
                params: vec![Some(Bytes::from_static(b"7"))],
                result_formats: vec![],
            })));
            tap.execute(
                &frame(FrontendMessage::Execute {
                    portal: String::new(),
                    max_rows: 0,
                }),
                || true,
            );
        };
        let a = "SELECT a FROM t WHERE id = $1";
        let b = "SELECT b FROM t WHERE id = $1";
        for (sql, types) in [
            (a, vec![]),
            (a, vec![]),
            (a, vec![23]),
            (a, vec![20]),
            (a, vec![20]),
            (b, vec![20]),
            (a, vec![20]),
        ] {
            run(&mut tap, sql, types.clone());
            let job = rx.try_recv().expect("sampled");
            assert_eq!((&*job.sql, &job.param_types), (sql, &types));
        }
        let write = "UPDATE t SET a = 1 WHERE id = $1";
        run(&mut tap, write, vec![]);
        assert!(rx.try_recv().is_err(), "the read it replaced is forgotten");
    }

    #[test]
    fn only_single_reads_are_sampled_and_sets_are_tracked() {
        let (s, mut rx) = shadow(16);
        let mut tap = ShadowTap::new(s, &[]);
        for sql in [
            "UPDATE t SET a = 1",
            "SELECT * FROM t FOR UPDATE",
            "SELECT nextval('s')",
            "SELECT 1; SELECT 2",
        ] {
            tap.query(sql, &classify_uncached(sql), || true);
            assert!(rx.try_recv().is_err(), "{sql} must not be sampled");
        }
        let set = "SET search_path = app";
        tap.query(set, &classify_uncached(set), || true);
        let sql = "SELECT a FROM t";
        tap.query(sql, &classify_uncached(sql), || true);
        let job = rx.try_recv().expect("sampled");
        assert_eq!(&*job.settings, &[set.to_string()]);
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let (s, _rx) = shadow(1);
        let mut tap = ShadowTap::new(s.clone(), &[]);
        let sql = "SELECT a FROM t";
        for _ in 0..3 {
            tap.query(sql, &classify_uncached(sql), || true);
        }
        let q = s.snapshot().queue;
        assert_eq!((q.pushed, q.dropped), (1, 2));
    }
}
