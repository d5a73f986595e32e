//! The receive low-water mark of a TCP socket (`SO_RCVLOWAT`): how many bytes must have
//! arrived before the kernel reports the socket readable. Neither socket2 nor nix sets it.
//!
//! Why: while a large COPY streams in, a server writes 8 KB at a time, and the backfill
//! was woken for about every 24 KB of it: 62,000–150,000 wake-ups per 10M-row run. Each
//! one costs the reader a context switch and the writing server a wake-up call.
//! [`crate::copy_conn`] raises the mark to 128 KB while it reads a large COPY: 13,000–15,000
//! wake-ups per run, half the backfill's system CPU (`docs/benchmarks.md`).

use std::os::fd::AsRawFd;
use tokio::net::TcpStream;

/// Sets the mark to `bytes`, but at most a quarter of the socket's receive buffer (Linux
/// grows the buffer for a mark above half of it and clamps the TCP window to the mark)
/// and at least 1 (the default). Returns the value set.
pub(crate) fn set(tcp: &TcpStream, bytes: usize) -> std::io::Result<usize> {
    let cap = socket2::SockRef::from(tcp).recv_buffer_size()? / 4;
    let value = bytes.min(cap).max(1);
    let raw = libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX);
    // SAFETY: the descriptor is `tcp`'s, which outlives the call; the option value is a
    // c_int and its size is passed with it.
    let rc = unsafe {
        libc::setsockopt(
            tcp.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            std::ptr::from_ref(&raw).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The mark in effect.
#[cfg(test)]
fn get(tcp: &TcpStream) -> std::io::Result<usize> {
    let mut raw: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: as in `set`; `raw` and `len` are valid for writes of their size.
    let rc = unsafe {
        libc::getsockopt(
            tcp.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            std::ptr::from_mut(&mut raw).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(usize::try_from(raw).unwrap_or(0))
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_mark_is_set_within_a_quarter_of_the_receive_buffer() -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let tcp = TcpStream::connect(listener.local_addr()?).await?;
        assert_eq!(get(&tcp)?, 1, "the default");
        let quarter = socket2::SockRef::from(&tcp).recv_buffer_size()? / 4;
        assert_eq!(set(&tcp, 4096)?, 4096.min(quarter));
        assert_eq!(get(&tcp)?, 4096.min(quarter));
        let big = set(&tcp, usize::MAX)?;
        assert_eq!(big, quarter, "capped");
        assert_eq!(get(&tcp)?, big);
        assert_eq!(set(&tcp, 0)?, 1, "never below 1");
        assert_eq!(get(&tcp)?, 1);
        Ok(())
    }
}
