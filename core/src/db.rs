//! Which of the two databases: the one name for a side everywhere (the tools' connections
//! and errors, the proxy's backends, metric labels, directions).

/// The database a migration moves from, or the one it moves to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Db {
    Old,
    New,
}

impl Db {
    /// `old` or `new`: metric labels, the status API, messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Db::Old => "old",
            Db::New => "new",
        }
    }
}

impl std::fmt::Display for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
