//! The handshake against a scripted server on an in-memory stream. SCRAM is exercised
//! against real servers (tests/tests/auth.rs through the proxy, copy_conn.rs).

use super::*;
use crate::tls::ChannelBinding;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

fn binding(setting: ChannelBinding) -> Binding {
    Binding {
        data: None,
        tls: false,
        setting,
    }
}

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn auth(code: i32, rest: &[u8]) -> Vec<u8> {
    let mut b = code.to_be_bytes().to_vec();
    b.extend_from_slice(rest);
    msg(b'R', &b)
}

/// Reads one untagged (startup) or tagged message from the client.
async fn read_client(s: &mut DuplexStream, tagged: bool) -> (Option<u8>, Vec<u8>) {
    let tag = if tagged {
        Some(s.read_u8().await.expect("tag"))
    } else {
        None
    };
    let len = s.read_u32().await.expect("length") as usize;
    let mut body = vec![0; len - 4];
    s.read_exact(&mut body).await.expect("body");
    (tag, body)
}

const READY: &[u8] = &[b'Z', 0, 0, 0, 5, b'I'];

async fn run(
    password: Option<&[u8]>,
    setting: ChannelBinding,
    server: impl FnOnce(DuplexStream) -> tokio::task::JoinHandle<()>,
) -> (Result<Session, HandshakeError>, BytesMut) {
    let (mut client, server_end) = tokio::io::duplex(64 * 1024);
    let served = server(server_end);
    let b = binding(setting);
    let mut buf = BytesMut::new();
    let r = handshake(
        &mut client,
        &mut buf,
        &Startup {
            user: "alice",
            password,
            params: &[("database", "db1"), ("application_name", "t")],
            binding: &b,
            max_message: 1 << 20,
        },
    )
    .await;
    drop(client);
    served.await.expect("server task");
    (r, buf)
}

#[tokio::test]
async fn md5_then_parameters_key_and_what_follows() {
    let (r, buf) = run(Some(b"secret"), ChannelBinding::Prefer, |mut s| {
        tokio::spawn(async move {
            let (_, startup) = read_client(&mut s, false).await;
            assert_eq!(&startup[..4], &196608u32.to_be_bytes());
            assert_eq!(
                &startup[4..],
                b"user\0alice\0database\0db1\0application_name\0t\0\0"
            );
            s.write_all(&auth(5, b"salt")).await.expect("write");
            let (tag, body) = read_client(&mut s, true).await;
            assert_eq!(tag, Some(b'p'));
            let want = postgres_protocol::authentication::md5_hash(b"alice", b"secret", *b"salt");
            assert_eq!(body, [want.as_bytes(), b"\0"].concat());
            let mut rest = auth(0, b"");
            rest.extend(msg(b'S', b"server_version\x0017.0\0"));
            rest.extend(msg(b'N', b"SNOTICE\0Mhi\0\0"));
            rest.extend(msg(b'K', &[0, 0, 0, 42, 1, 2, 3, 4]));
            rest.extend_from_slice(READY);
            rest.extend(msg(b'C', b"extra\0"));
            s.write_all(&rest).await.expect("write");
        })
    })
    .await;
    let session = r.expect("handshake");
    assert_eq!(
        session.params,
        vec![("server_version".to_string(), "17.0".to_string())]
    );
    assert_eq!(
        session.key,
        Some(BackendKey {
            pid: 42,
            secret: Bytes::from_static(&[1, 2, 3, 4])
        })
    );
    assert_eq!(&buf[..], &msg(b'C', b"extra\0")[..]);
}

#[tokio::test]
async fn cleartext_password() {
    let (r, _) = run(Some(b"pw"), ChannelBinding::Prefer, |mut s| {
        tokio::spawn(async move {
            read_client(&mut s, false).await;
            s.write_all(&auth(3, b"")).await.expect("write");
            let (tag, body) = read_client(&mut s, true).await;
            assert_eq!((tag, &body[..]), (Some(b'p'), &b"pw\0"[..]));
            let mut rest = auth(0, b"");
            rest.extend_from_slice(READY);
            s.write_all(&rest).await.expect("write");
        })
    })
    .await;
    assert!(r.expect("handshake").key.is_none());
}

/// A server that asks for `request` and then waits for the client to go away.
fn asks(request: Vec<u8>) -> impl FnOnce(DuplexStream) -> tokio::task::JoinHandle<()> {
    move |mut s| {
        tokio::spawn(async move {
            read_client(&mut s, false).await;
            s.write_all(&request).await.expect("write");
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink).await;
        })
    }
}

#[tokio::test]
async fn refusals_are_typed() {
    let (r, _) = run(None, ChannelBinding::Prefer, asks(auth(3, b""))).await;
    assert!(matches!(r, Err(HandshakeError::NoPassword)), "{r:?}");

    let (r, _) = run(Some(b"pw"), ChannelBinding::Prefer, asks(auth(7, b""))).await;
    let e = r.expect_err("GSSAPI");
    assert!(
        matches!(e, HandshakeError::UnsupportedAuth { code: 7 }),
        "{e:?}"
    );
    assert!(e.to_string().contains("GSSAPI"), "{e}");

    let refusal = msg(b'E', b"SFATAL\0C28P01\0Mpassword authentication failed\0\0");
    let (r, _) = run(Some(b"pw"), ChannelBinding::Prefer, asks(refusal)).await;
    let e = r.expect_err("refused");
    assert_eq!(e.code(), Some("28P01"));
    assert_eq!(
        e.to_string(),
        "FATAL: password authentication failed (SQLSTATE 28P01)"
    );

    let mut trusted = auth(0, b"");
    trusted.extend_from_slice(READY);
    let (r, _) = run(None, ChannelBinding::Require, asks(trusted)).await;
    assert!(matches!(r, Err(HandshakeError::Binding(_))), "{r:?}");

    // Half a message, then the server hangs up.
    let (r, _) = run(None, ChannelBinding::Prefer, |mut s| {
        tokio::spawn(async move {
            read_client(&mut s, false).await;
            s.write_all(&msg(b'S', &[0; 64])[..20])
                .await
                .expect("write");
        })
    })
    .await;
    assert!(matches!(r, Err(HandshakeError::Closed)), "{r:?}");

    let mut huge = vec![b'S'];
    huge.extend_from_slice(&(2u32 << 20).to_be_bytes());
    let (r, _) = run(None, ChannelBinding::Prefer, asks(huge)).await;
    assert!(matches!(r, Err(HandshakeError::Protocol(_))), "{r:?}");
}
