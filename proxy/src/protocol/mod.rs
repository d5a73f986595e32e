//! The PostgreSQL v3 wire protocol as the proxy needs it: framing, startup packets, and the
//! frontend and backend messages it reads or writes. Pure functions over byte buffers; no I/O.

pub mod backend;
mod buf;
pub mod describe;
pub mod error;
pub mod frame;
pub mod frontend;
pub mod startup;

#[cfg(test)]
mod roundtrip_tests;

pub use error::ProtocolError;
pub use frame::Frame;

/// Building simple tagged messages outside this module.
pub mod buf_public {
    use bytes::{BufMut, BytesMut};

    /// Appends one tagged message whose body `body` writes; the length is filled in.
    pub fn tagged(out: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
        out.put_u8(tag);
        let start = out.len();
        out.put_i32(0);
        body(out);
        let len = (out.len() - start) as i32;
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }
}
