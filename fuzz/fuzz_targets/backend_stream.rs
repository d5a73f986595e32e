//! Arbitrary server bytes as the proxy reads them: nothing may panic.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use switchyard_proxy::protocol::backend::BackendMessage;
use switchyard_proxy::protocol::Frame;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = Frame::parse(&mut buf, 1 << 16) {
        let _ = BackendMessage::decode(&frame);
    }
});
