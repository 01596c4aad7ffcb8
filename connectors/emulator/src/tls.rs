//! HTTPS for the emulators (`rebuy emulate ... --tls`): a self-signed certificate generated at
//! start, served with rustls.
//!
//! Real CRMs speak HTTPS only: Bitrix24 refuses REST calls over plain HTTP ("Https required"),
//! and the official Bitrix24 JS SDK refuses `http://` webhooks before sending anything. With
//! [`SelfSigned`] an emulator serves the same API over TLS on `127.0.0.1`; a client trusts the
//! printed certificate (for rebuy and most OpenSSL/rustls clients: `SSL_CERT_FILE=cert.pem`).
//! A plain-HTTP request to the TLS port gets the CRM's own refusal (see [`PlainHttp`]) instead
//! of a handshake error, so a client configured with `http://` learns why.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;

/// How long a client may take to start and finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A certificate for `localhost` and `127.0.0.1` signed by itself, with its server config.
#[derive(Clone)]
pub struct SelfSigned {
    cert_pem: String,
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for SelfSigned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private key stays out of debug output.
        f.debug_struct("SelfSigned").finish_non_exhaustive()
    }
}

impl SelfSigned {
    /// Generates a fresh key pair and certificate valid for `localhost`, `127.0.0.1` and
    /// `::1`.
    pub fn generate() -> std::io::Result<Self> {
        let names = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        let ck = rcgen::generate_simple_self_signed(names).map_err(std::io::Error::other)?;
        let cert_der = ck.cert.der().clone();
        let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(
            rustls::pki_types::PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()),
        );
        // An explicit provider: with several rustls providers in one build, the process-wide
        // default is ambiguous.
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(std::io::Error::other)?
            .with_no_client_auth()
            .with_single_cert(vec![cert_der], key_der)
            .map_err(std::io::Error::other)?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            cert_pem: ck.cert.pem(),
            acceptor: TlsAcceptor::from(Arc::new(cfg)),
        })
    }

    /// The certificate in PEM: what a client adds to its trusted roots.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Wraps a bound listener: every connection is accepted and handshaken in its own task;
    /// plain-HTTP requests get `plain`'s answer and are closed.
    pub fn listen(&self, tcp: TcpListener, plain: PlainHttp) -> std::io::Result<TlsListener> {
        let addr = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let acceptor = self.acceptor.clone();
        let task = tokio::spawn(async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::debug!("emulator accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, async move {
                        let mut first = [0u8; 1];
                        if stream.peek(&mut first).await.ok()? == 0 {
                            return None;
                        }
                        // A TLS connection opens with a handshake record (content type 22).
                        if first[0] != 0x16 {
                            answer_plain(stream, plain).await;
                            return None;
                        }
                        let tls = acceptor.accept(stream).await.ok()?;
                        tx.send((tls, peer)).await.ok()
                    })
                    .await;
                });
            }
        });
        Ok(TlsListener {
            rx,
            addr,
            task: Some(task),
        })
    }
}

/// What a plain-HTTP request to the TLS port is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlainHttp {
    /// Bitrix24's REST refusal: 400 `{"error":"INVALID_REQUEST","error_description":"Https
    /// required."}`.
    Bitrix24,
    /// nginx's page for plain HTTP on an HTTPS port (amoCRM's gateway is nginx).
    Nginx,
}

impl PlainHttp {
    fn response(self) -> Vec<u8> {
        let (ctype, body) = match self {
            Self::Bitrix24 => (
                "application/json; charset=utf-8",
                r#"{"error":"INVALID_REQUEST","error_description":"Https required."}"#.to_owned(),
            ),
            Self::Nginx => (
                "text/html",
                "<html>\r\n<head><title>400 The plain HTTP request was sent to HTTPS port</title></head>\r\n<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n<center>The plain HTTP request was sent to HTTPS port</center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n".to_owned(),
            ),
        };
        format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }
}

/// Reads the request head (so the client is not reset mid-send), answers, closes.
async fn answer_plain(mut stream: TcpStream, plain: PlainHttp) {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let _ = stream.write_all(&plain.response()).await;
    let _ = stream.shutdown().await;
}

/// A TLS listener for `axum::serve`: yields connections whose handshake completed.
#[derive(Debug)]
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    addr: SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(x) => x,
            // The accept task ended (runtime shutting down): never yield again.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}
