//! Property tests: every message encodes to bytes that frame and decode back to itself, and
//! no byte string makes the decoders panic.

use super::backend::{Authentication, BackendMessage, ErrorFields};
use super::frontend::{Bind, FrontendMessage, FunctionCall, Target};
use super::startup::StartupRequest;
use super::Frame;
use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

fn cstring() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,24}"
}

fn value() -> impl Strategy<Value = Option<Bytes>> {
    prop::option::of(prop::collection::vec(any::<u8>(), 0..32).prop_map(Bytes::from))
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![Just(Target::Statement), Just(Target::Portal)]
}

fn frontend() -> impl Strategy<Value = FrontendMessage> {
    prop_oneof![
        cstring().prop_map(FrontendMessage::Query),
        (
            cstring(),
            cstring(),
            prop::collection::vec(any::<i32>(), 0..8)
        )
            .prop_map(|(name, query, param_types)| FrontendMessage::Parse {
                name,
                query,
                param_types
            }),
        (
            cstring(),
            cstring(),
            prop::collection::vec(0i16..2, 0..4),
            prop::collection::vec(value(), 0..6),
            prop::collection::vec(0i16..2, 0..4)
        )
            .prop_map(
                |(portal, statement, param_formats, params, result_formats)| {
                    FrontendMessage::Bind(Bind {
                        portal,
                        statement,
                        param_formats,
                        params,
                        result_formats,
                    })
                }
            ),
        (target(), cstring()).prop_map(|(target, name)| FrontendMessage::Describe { target, name }),
        (target(), cstring()).prop_map(|(target, name)| FrontendMessage::Close { target, name }),
        (cstring(), any::<i32>())
            .prop_map(|(portal, max_rows)| FrontendMessage::Execute { portal, max_rows }),
        Just(FrontendMessage::Sync),
        Just(FrontendMessage::Flush),
        Just(FrontendMessage::Terminate),
        Just(FrontendMessage::CopyDone),
        prop::collection::vec(any::<u8>(), 0..64)
            .prop_map(|v| FrontendMessage::CopyData(Bytes::from(v))),
        cstring().prop_map(FrontendMessage::CopyFail),
        (
            any::<i32>(),
            prop::collection::vec(0i16..2, 0..3),
            prop::collection::vec(value(), 0..4),
            0i16..2
        )
            .prop_map(|(oid, arg_formats, args, result_format)| {
                FrontendMessage::FunctionCall(FunctionCall {
                    oid,
                    arg_formats,
                    args,
                    result_format,
                })
            }),
    ]
}

fn backend() -> impl Strategy<Value = BackendMessage> {
    prop_oneof![
        Just(BackendMessage::Authentication(Authentication::Ok)),
        any::<[u8; 4]>()
            .prop_map(|salt| BackendMessage::Authentication(Authentication::Md5Password { salt })),
        prop::collection::vec("[a-zA-Z0-9-]{1,16}", 0..3).prop_map(|mechanisms| {
            BackendMessage::Authentication(Authentication::Sasl { mechanisms })
        }),
        (any::<i32>(), prop::collection::vec(any::<u8>(), 4..8)).prop_map(|(pid, key)| {
            BackendMessage::BackendKeyData {
                pid,
                key: key.into(),
            }
        }),
        (cstring(), cstring())
            .prop_map(|(name, value)| BackendMessage::ParameterStatus { name, value }),
        prop_oneof![Just(b'I'), Just(b'T'), Just(b'E')].prop_map(BackendMessage::ReadyForQuery),
        prop::collection::vec((1u8..=255, cstring()), 0..5)
            .prop_map(|fields| BackendMessage::ErrorResponse(ErrorFields { fields })),
        (any::<i32>(), prop::collection::vec(cstring(), 0..3)).prop_map(
            |(newest_minor, unrecognized)| BackendMessage::NegotiateProtocolVersion {
                newest_minor,
                unrecognized
            }
        ),
        cstring().prop_map(BackendMessage::CommandComplete),
    ]
}

proptest! {
    #[test]
    fn frontend_round_trip(msg in frontend()) {
        let mut buf = BytesMut::new();
        msg.encode(&mut buf);
        let encoded = buf.clone().freeze();
        let frame = Frame::parse(&mut buf, 1 << 20).expect("frames").expect("complete");
        prop_assert!(buf.is_empty());
        prop_assert_eq!(frame.raw(), &encoded);
        prop_assert_eq!(FrontendMessage::decode(&frame).expect("decodes"), msg);
    }

    #[test]
    fn backend_round_trip(msg in backend()) {
        let mut buf = BytesMut::new();
        msg.encode(&mut buf);
        let frame = Frame::parse(&mut buf, 1 << 20).expect("frames").expect("complete");
        prop_assert_eq!(BackendMessage::decode(&frame).expect("decodes"), msg);
    }

    #[test]
    fn startup_round_trip(params in prop::collection::vec(("[a-z_]{1,12}", cstring()), 0..6)) {
        let msg = StartupRequest::Startup { major: 3, minor: 0, params };
        let mut buf = BytesMut::new();
        msg.encode(&mut buf);
        prop_assert_eq!(StartupRequest::parse(&mut buf).expect("parses"), Some(msg));
    }

    /// Arbitrary bytes either frame and decode, ask for more, or fail cleanly: never panic.
    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..256)) {
        let mut buf = BytesMut::from(&data[..]);
        while let Ok(Some(frame)) = Frame::parse(&mut buf, 4096) {
            let _ = FrontendMessage::decode(&frame);
            let _ = BackendMessage::decode(&frame);
        }
        let mut buf = BytesMut::from(&data[..]);
        let _ = StartupRequest::parse(&mut buf);
    }
}
