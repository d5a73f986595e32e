//! Free TCP ports on 127.0.0.1 for servers started by tests.
//!
//! Ports are drawn at random from a high range outside the kernel's ephemeral range (so that
//! outgoing connections do not grab them), checked by binding, and never handed out twice
//! within one process. Parallel test processes are kept apart by the randomness and the bind
//! check; servers that lose a race anyway are restarted on a new port by their starters.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::ops::Range;
use std::sync::{Mutex, OnceLock};

use anyhow::{bail, Result};
use rand::Rng;

const LOW: u16 = 20_000;
const HIGH: u16 = 60_000;
const ATTEMPTS: usize = 1_000;

fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashSet::new()))
}

/// The kernel's ephemeral port range (`ip_local_port_range`), if readable.
fn ephemeral_range() -> Option<Range<u16>> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut parts = text.split_whitespace().map(str::parse::<u16>);
    let low = parts.next()?.ok()?;
    let high = parts.next()?.ok()?;
    Some(low..high.saturating_add(1))
}

/// The range to draw from: `LOW..HIGH`, cut below the ephemeral range when enough remains.
fn candidate_range() -> Range<u16> {
    match ephemeral_range() {
        Some(eph) if eph.start > LOW + 2_000 && eph.start <= HIGH => LOW..eph.start,
        _ => LOW..HIGH,
    }
}

/// A free port on 127.0.0.1, never returned before by this process.
///
/// Panics only if no free port was found in 1000 random tries; see [`try_free_port`].
pub fn free_port() -> u16 {
    match try_free_port() {
        Ok(port) => port,
        Err(err) => panic!("{err:#}"),
    }
}

/// Like [`free_port`], returning an error instead of panicking.
pub fn try_free_port() -> Result<u16> {
    let range = candidate_range();
    let mut rng = rand::rng();
    for _ in 0..ATTEMPTS {
        let port = rng.random_range(range.clone());
        let mut taken = match handed_out().lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if taken.contains(&port) {
            continue;
        }
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            taken.insert(port);
            return Ok(port);
        }
    }
    bail!("no free port on 127.0.0.1 in {range:?} after {ATTEMPTS} tries")
}

/// True when a TCP connection to 127.0.0.1:`port` is accepted right now.
pub fn accepts_connections(port: u16) -> bool {
    let addr = (Ipv4Addr::LOCALHOST, port).into();
    std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(500)).is_ok()
}

/// A port on 127.0.0.1 that refuses connections for as long as the returned socket lives:
/// bound, never listening, so no other server can take it meanwhile (unlike a port that
/// was merely free a moment ago).
pub fn refusing_port() -> Result<(tokio::net::TcpSocket, u16)> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind((Ipv4Addr::LOCALHOST, 0).into())?;
    let port = socket.local_addr()?.port();
    Ok((socket, port))
}
