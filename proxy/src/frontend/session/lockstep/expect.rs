//! What the proxy expects back from the primary for what it sent, in order, and what to do
//! with each answer. Pure: fed one backend message tag at a time, no I/O (the mediator's
//! loop drives it). The server answers every frontend message in order, skips to the next
//! Sync after an error in the extended protocol, and ends each simple Query with one
//! ReadyForQuery; the queue follows the same rules.

use std::collections::VecDeque;

/// Where a result stream goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    /// To the client as it comes.
    Client,
    /// To the client, but each CommandComplete waits until the proxy's own commit
    /// succeeded (PostgreSQL commits an implicit transaction before it says
    /// CommandComplete, so a failed commit must leave only the error).
    HoldComplete,
    /// The proxy's own statement: nothing reaches the client.
    Swallow,
    /// The proxy's own query whose rows it reads (a drain, a lookup).
    Rows,
}

/// One expected answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// One response (ParseComplete, BindComplete, CloseComplete) for the client.
    Relay,
    /// One response to a message the proxy injected.
    Swallow,
    /// ParameterDescription (for a statement) then RowDescription or NoData, for the client.
    Describe { statement: bool },
    /// A result stream up to CommandComplete, EmptyQueryResponse or PortalSuspended; with
    /// `until_ready` (a simple Query) the results of each of its statements, up to its
    /// ReadyForQuery. `injected`: the proxy sent it.
    Results {
        sink: Sink,
        until_ready: bool,
        injected: bool,
    },
    /// ReadyForQuery.
    Ready { forward: bool },
}

impl Expect {
    fn injected(&self) -> bool {
        match self {
            Expect::Swallow => true,
            Expect::Results { injected, .. } => *injected,
            Expect::Relay | Expect::Describe { .. } | Expect::Ready { .. } => false,
        }
    }
}

/// What to do with one backend message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Pass it to the client.
    Client,
    /// Keep it until the proxy's own commit succeeded.
    Hold,
    /// Nothing.
    Drop,
    /// A DataRow of a `Rows` sink: the caller reads it.
    Row,
    /// CopyInResponse: the client's COPY data must follow.
    CopyIn,
    /// An ErrorResponse. `injected`: it answers the proxy's own statement. `needs_sync`: no
    /// Sync is queued behind it, so the proxy must send one to end the server's skipping.
    Error {
        injected: bool,
        needs_sync: bool,
    },
    Ready {
        status: u8,
        forward: bool,
    },
    /// Not what was expected: the session cannot go on.
    Unexpected,
}

#[derive(Debug, Default)]
pub struct Expectations {
    queue: VecDeque<Expect>,
    /// The ParameterDescription of the Describe at the front was seen.
    described_params: bool,
}

impl Expectations {
    pub fn push(&mut self, e: Expect) {
        self.queue.push_back(e);
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The result stream at the front belongs to an extended-protocol Execute.
    pub fn front_is_execute(&self) -> bool {
        matches!(
            self.queue.front(),
            Some(Expect::Results {
                until_ready: false,
                ..
            })
        )
    }

    fn pop(&mut self) {
        self.queue.pop_front();
        self.described_params = false;
    }

    /// Decides what to do with a message of type `tag`; `status` is the ReadyForQuery's
    /// transaction status byte when `tag` is `Z`.
    pub fn on_message(&mut self, tag: u8, status: u8) -> Action {
        let Some(front) = self.queue.front().cloned() else {
            return Action::Unexpected;
        };
        if tag == b'E' {
            return self.on_error(front);
        }
        match front {
            Expect::Relay | Expect::Swallow => match tag {
                b'1' | b'2' | b'3' => {
                    self.pop();
                    if front == Expect::Relay {
                        Action::Client
                    } else {
                        Action::Drop
                    }
                }
                _ => Action::Unexpected,
            },
            Expect::Describe { statement } => match tag {
                b't' if statement && !self.described_params => {
                    self.described_params = true;
                    Action::Client
                }
                b'T' | b'n' => {
                    self.pop();
                    Action::Client
                }
                _ => Action::Unexpected,
            },
            Expect::Results {
                sink, until_ready, ..
            } => {
                let shown = |hold: bool| match sink {
                    Sink::Client => Action::Client,
                    Sink::HoldComplete if hold => Action::Hold,
                    Sink::HoldComplete => Action::Client,
                    Sink::Swallow | Sink::Rows => Action::Drop,
                };
                match tag {
                    b'Z' if until_ready => {
                        self.pop();
                        self.on_message(tag, status)
                    }
                    b'Z' => Action::Unexpected,
                    b'D' if sink == Sink::Rows => Action::Row,
                    b'C' | b'I' => {
                        if !until_ready {
                            self.pop();
                        }
                        shown(true)
                    }
                    b's' => {
                        self.pop();
                        shown(false)
                    }
                    b'G' => Action::CopyIn,
                    _ => shown(false),
                }
            }
            Expect::Ready { forward } => match tag {
                b'Z' => {
                    self.pop();
                    Action::Ready { status, forward }
                }
                _ => Action::Unexpected,
            },
        }
    }

    fn on_error(&mut self, front: Expect) -> Action {
        let injected = front.injected();
        if let Expect::Results {
            until_ready: true, ..
        } = front
        {
            // A simple Query: its ReadyForQuery follows.
            self.pop();
            return Action::Error {
                injected,
                needs_sync: false,
            };
        }
        if let Expect::Ready { .. } = front {
            return Action::Unexpected;
        }
        // Extended protocol: the server skips everything up to the next Sync.
        self.pop();
        while matches!(self.queue.front(), Some(e) if !matches!(e, Expect::Ready { .. })) {
            self.pop();
        }
        Action::Error {
            injected,
            needs_sync: self.queue.is_empty(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(x: &mut Expectations, tags: &[u8]) -> Vec<Action> {
        tags.iter().map(|&t| x.on_message(t, b'T')).collect()
    }

    #[test]
    fn a_wrapped_simple_query() {
        // BEGIN;SET LOCAL (swallowed), the client's INSERT (complete held), our drain rows.
        let mut x = Expectations::default();
        x.push(Expect::Results {
            sink: Sink::Swallow,
            until_ready: true,
            injected: true,
        });
        x.push(Expect::Ready { forward: false });
        x.push(Expect::Results {
            sink: Sink::HoldComplete,
            until_ready: true,
            injected: false,
        });
        x.push(Expect::Ready { forward: false });
        let got = feed(&mut x, b"CCZCZ");
        use Action::*;
        assert_eq!(
            got,
            vec![
                Drop,
                Drop,
                Ready {
                    status: b'T',
                    forward: false
                },
                Hold,
                Ready {
                    status: b'T',
                    forward: false
                }
            ]
        );
        assert!(x.is_empty());
    }

    #[test]
    fn extended_errors_skip_to_the_sync() {
        let mut x = Expectations::default();
        for e in [
            Expect::Relay,
            Expect::Relay,
            Expect::Swallow,
            Expect::Results {
                sink: Sink::Client,
                until_ready: false,
                injected: false,
            },
            Expect::Ready { forward: true },
        ] {
            x.push(e);
        }
        assert_eq!(x.on_message(b'1', 0), Action::Client);
        assert_eq!(
            x.on_message(b'E', 0),
            Action::Error {
                injected: false,
                needs_sync: false
            }
        );
        assert_eq!(
            x.on_message(b'Z', b'E'),
            Action::Ready {
                status: b'E',
                forward: true
            }
        );
        // An injected statement failing with no Sync queued: the proxy must send one.
        let mut x = Expectations::default();
        x.push(Expect::Swallow);
        x.push(Expect::Results {
            sink: Sink::Rows,
            until_ready: false,
            injected: true,
        });
        assert_eq!(
            x.on_message(b'E', 0),
            Action::Error {
                injected: true,
                needs_sync: true
            }
        );
        assert!(x.is_empty());
    }

    #[test]
    fn rows_describe_and_copy() {
        let mut x = Expectations::default();
        x.push(Expect::Describe { statement: true });
        x.push(Expect::Results {
            sink: Sink::Rows,
            until_ready: false,
            injected: true,
        });
        x.push(Expect::Results {
            sink: Sink::Client,
            until_ready: true,
            injected: false,
        });
        x.push(Expect::Ready { forward: true });
        use Action::*;
        assert_eq!(
            feed(&mut x, b"tTTDDCGC"),
            vec![Client, Client, Drop, Row, Row, Drop, CopyIn, Client]
        );
        assert_eq!(
            x.on_message(b'Z', b'I'),
            Ready {
                status: b'I',
                forward: true
            }
        );
        assert_eq!(x.on_message(b'Z', b'I'), Unexpected);
    }
}
