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
use bytes::Bytes;
use std::collections::HashMap;
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
    statements: HashMap<String, Arc<Prepared>>,
    /// Bound portals of read statements: the statement and the Bind as the client sent it.
    portals: HashMap<String, (Arc<Prepared>, Frame)>,
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
            statements: HashMap::new(),
            portals: HashMap::new(),
        }
    }

    /// A simple Query. `idle` reports whether the session is outside a transaction block.
    pub fn query(&mut self, sql: &str, classes: &[Classified], idle: impl FnOnce() -> bool) {
        if let Some(c) = single_read(classes) {
            if !idle() {
                return;
            }
            if let Some(kind) = self.shadow.decide(c.fingerprint) {
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
        let Some(kind) = self.shadow.decide(prepared.fingerprint) else {
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
