//! Which database is the primary. Before the cutover's `writes-new` phase the old database
//! takes the client's statements and the new one follows; from `writes-new` on, the roles
//! swap, so that going back loses nothing. Everything that names a side of a lockstep
//! transaction (two-phase gids, retry logs, messages) says which way it runs.

use crate::db::Db;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// Old is the primary, new the secondary (every phase before `writes-new`).
    #[default]
    OldToNew,
    /// New is the primary, old the secondary (`writes-new`).
    NewToOld,
}

/// Prefix of every two-phase gid the proxy prepares.
pub const GID_PREFIX: &str = "switchyard:";
/// Gids prepared on old while new is the primary: `switchyard:n:<new's xid>`. Forward gids
/// stay `switchyard:<old's xid>`, as before the cutover existed.
const REVERSE_TAG: &str = "n:";

impl Direction {
    pub const BOTH: [Direction; 2] = [Direction::OldToNew, Direction::NewToOld];

    pub fn primary(self) -> Db {
        match self {
            Direction::OldToNew => Db::Old,
            Direction::NewToOld => Db::New,
        }
    }

    pub fn secondary(self) -> Db {
        match self {
            Direction::OldToNew => Db::New,
            Direction::NewToOld => Db::Old,
        }
    }

    pub fn other(self) -> Direction {
        match self {
            Direction::OldToNew => Direction::NewToOld,
            Direction::NewToOld => Direction::OldToNew,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::OldToNew => "old-to-new",
            Direction::NewToOld => "new-to-old",
        }
    }

    /// The gid of the secondary's transaction for a primary transaction id.
    pub fn gid(self, primary_xid: &str) -> String {
        match self {
            Direction::OldToNew => format!("{GID_PREFIX}{primary_xid}"),
            Direction::NewToOld => format!("{GID_PREFIX}{REVERSE_TAG}{primary_xid}"),
        }
    }

    /// The direction and primary transaction id a gid names, if it is one of ours.
    pub fn of_gid(gid: &str) -> Option<(Direction, &str)> {
        let rest = gid.strip_prefix(GID_PREFIX)?;
        let (dir, xid) = match rest.strip_prefix(REVERSE_TAG) {
            Some(xid) => (Direction::NewToOld, xid),
            None => (Direction::OldToNew, rest),
        };
        (!xid.is_empty() && xid.bytes().all(|b| b.is_ascii_digit())).then_some((dir, xid))
    }

    /// The primary transaction id of a gid of this direction.
    pub fn xid_of_gid(self, gid: &str) -> Option<&str> {
        match Direction::of_gid(gid) {
            Some((d, xid)) if d == self => Some(xid),
            _ => None,
        }
    }
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gids_round_trip_and_keep_their_direction() {
        for d in Direction::BOTH {
            let gid = d.gid("4711");
            assert_eq!(Direction::of_gid(&gid), Some((d, "4711")));
            assert_eq!(d.xid_of_gid(&gid), Some("4711"));
        }
        assert_eq!(Direction::OldToNew.gid("7"), "switchyard:7");
        assert_eq!(Direction::OldToNew.xid_of_gid("switchyard:n:7"), None);
        assert_eq!(Direction::NewToOld.xid_of_gid("switchyard:7"), None);
        assert_eq!(Direction::of_gid("switchyard:n:"), None);
        assert_eq!(Direction::of_gid("switchyard:1;drop"), None);
        assert_eq!(Direction::of_gid("other:1"), None);
    }

    #[test]
    fn sides() {
        assert_eq!(Direction::NewToOld.primary(), Db::New);
        assert_eq!(Direction::NewToOld.secondary(), Db::Old);
        assert_eq!(Direction::OldToNew.primary(), Db::Old);
    }
}
