//! A hostile or broken server answering a gigabyte: the client refuses the answer once it
//! passes the cap, with an error naming the portal and the endpoint, and memory stays flat.
use rebuy_amocrm::{AmoClient, AmoSettings};
use rebuy_core::{Connector, ConnectorError, TokenManager};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Peak resident memory of this process (Linux `VmHWM`), in bytes.
fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Serves every connection a 200 whose body is 1 GiB of JSON-looking bytes: chunked when
/// `chunked`, else with an honest `Content-Length`.
async fn hostile_server(chunked: bool) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let total: u64 = 1 << 30;
                let head = if chunked {
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_owned()
                } else {
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {total}\r\n\r\n"
                    )
                };
                if sock.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b' '; 1 << 20];
                for _ in 0..(total >> 20) {
                    let ok = if chunked {
                        sock.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                            .await
                            .is_ok()
                            && sock.write_all(&chunk).await.is_ok()
                            && sock.write_all(b"\r\n").await.is_ok()
                    } else {
                        sock.write_all(&chunk).await.is_ok()
                    };
                    if !ok {
                        return; // the client hung up: what it should do
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_gigabyte_answer_is_refused_with_a_clean_error_and_flat_memory() {
    for chunked in [false, true] {
        let addr = hostile_server(chunked).await;
        let base = url::Url::parse(&format!("http://{addr}")).unwrap();
        let settings = AmoSettings::new(base, "id", secrecy::SecretString::from("s"), "r");
        let tokens = Arc::new(TokenManager::fixed(secrecy::SecretString::from("token")));
        let client = AmoClient::new(settings, tokens).unwrap();
        let before = peak_rss();
        let err = client
            .account()
            .await
            .expect_err("a gigabyte is no account");
        let grew = peak_rss().saturating_sub(before);
        let ConnectorError::Invalid { message, .. } = &err else {
            panic!("chunked {chunked}: {err:?}");
        };
        assert!(message.contains("exceeds 64 MiB"), "{message}");
        assert!(
            message.contains("/api/v4/account"),
            "names the endpoint: {message}"
        );
        assert!(message.contains("127.0.0.1"), "names the portal: {message}");
        assert!(
            grew < 200 << 20,
            "chunked {chunked}: peak RSS grew {grew} bytes"
        );
    }
}

#[tokio::test]
async fn the_cap_is_the_configured_one() {
    // A 1 MiB cap refuses the same answer within its first MiB (chunked: no length to check
    // up front), and names the configured size.
    let addr = hostile_server(true).await;
    let base = url::Url::parse(&format!("http://{addr}")).unwrap();
    let mut settings = AmoSettings::new(base, "id", secrecy::SecretString::from("s"), "r");
    settings.max_answer_bytes = 1 << 20;
    let tokens = Arc::new(TokenManager::fixed(secrecy::SecretString::from("token")));
    let client = AmoClient::new(settings, tokens).unwrap();
    let before = peak_rss();
    let err = client.account().await.expect_err("over the cap");
    let grew = peak_rss().saturating_sub(before);
    let ConnectorError::Invalid { message, .. } = &err else {
        panic!("{err:?}");
    };
    assert!(message.contains("exceeds 1 MiB"), "{message}");
    assert!(
        message.contains("/api/v4/account") && message.contains("127.0.0.1"),
        "{message}"
    );
    assert!(grew < 32 << 20, "peak RSS grew {grew} bytes");
}
