//! Arbitrary client bytes: a startup packet, then tagged messages, as the proxy reads them.
//! Nothing may panic; a message that decodes must re-encode to the same bytes.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use switchyard_proxy::protocol::frontend::FrontendMessage;
use switchyard_proxy::protocol::startup::StartupRequest;
use switchyard_proxy::protocol::Frame;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    if StartupRequest::parse(&mut buf).is_err() {
        return;
    }
    while let Ok(Some(frame)) = Frame::parse(&mut buf, 1 << 16) {
        if let Ok(msg) = FrontendMessage::decode(&frame) {
            let mut out = BytesMut::new();
            msg.encode(&mut out);
            assert_eq!(&out[..], &frame.raw()[..], "re-encoding changed the message");
        }
        let _ = switchyard_proxy::protocol::frontend::bind_names(&frame);
        let _ = switchyard_proxy::protocol::frontend::execute_portal(&frame);
    }
});
