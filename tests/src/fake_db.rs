//! Database servers that ask for a clear-text password: just enough of the PostgreSQL and MariaDB/MySQL
//! protocols to ask, and a record of what every client sent, so a test can show that no password left the
//! agent. Both can pass the agent's driver connection through to a real server first, as an attacker who
//! answers the connection test honestly and asks the dump tool for the password would.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// What clients did to a fake server.
#[derive(Clone, Default)]
pub struct Heard {
    conns: Arc<AtomicUsize>,
    bytes: Arc<Mutex<Vec<u8>>>,
}

impl Heard {
    /// Connections accepted.
    pub fn connections(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }

    /// Whether any client sent `secret` (anywhere in what it sent to the fake itself; passed-through
    /// connections are not recorded).
    pub fn received(&self, secret: &str) -> bool {
        let bytes = self.bytes.lock().map(|b| b.clone()).unwrap_or_default();
        bytes.windows(secret.len()).any(|w| w == secret.as_bytes())
    }

    fn record(&self, b: &[u8]) {
        if let Ok(mut all) = self.bytes.lock() {
            all.extend_from_slice(b);
        }
    }
}

/// Reads what a client sends for a while (until it closes or 3 s pass), recording it.
async fn listen(s: &mut (impl AsyncRead + Unpin), heard: &Heard) {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
        if n == 0 {
            return;
        }
        heard.record(&buf[..n]);
    }
}

/// A PostgreSQL server that asks every client for a clear-text password, offering TLS (a self-signed
/// certificate) when `tls`. With `driver_to`, a connection whose startup message carries the driver's
/// `extra_float_digits` parameter is passed through to that real server instead.
pub async fn postgres(tls: bool, driver_to: Option<SocketAddr>) -> anyhow::Result<(SocketAddr, Heard)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let heard = Heard::default();
    let acceptor = tls_acceptor()?;
    let h = heard.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            h.conns.fetch_add(1, Ordering::SeqCst);
            let (h, acceptor) = (h.clone(), acceptor.clone());
            tokio::spawn(async move {
                let mut head = [0u8; 8];
                if s.read_exact(&mut head).await.is_err() {
                    return;
                }
                if head == [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f] {
                    if tls {
                        if s.write_all(b"S").await.is_err() {
                            return;
                        }
                        if let Ok(t) = acceptor.accept(s).await {
                            pg_session(t, &h, driver_to).await;
                        }
                    } else if s.write_all(b"N").await.is_ok() {
                        let mut head = [0u8; 8];
                        if s.read_exact(&mut head).await.is_ok() {
                            pg_startup(s, head, &h, driver_to).await;
                        }
                    }
                    return;
                }
                pg_startup(s, head, &h, driver_to).await;
            });
        }
    });
    Ok((addr, heard))
}

async fn pg_session<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, heard: &Heard, driver_to: Option<SocketAddr>) {
    let mut head = [0u8; 8];
    if s.read_exact(&mut head).await.is_ok() {
        pg_startup(s, head, heard, driver_to).await;
    }
}

/// After the first 8 bytes of a startup message: read the rest, then pass through or ask for the password.
async fn pg_startup<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    head: [u8; 8],
    heard: &Heard,
    driver_to: Option<SocketAddr>,
) {
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let mut rest = vec![0u8; len.saturating_sub(8).min(1 << 16)];
    if s.read_exact(&mut rest).await.is_err() {
        return;
    }
    let is_driver = rest.windows(18).any(|w| w == b"extra_float_digits");
    if let (true, Some(real)) = (is_driver, driver_to) {
        if let Ok(mut up) = TcpStream::connect(real).await
            && up.write_all(&head).await.is_ok()
            && up.write_all(&rest).await.is_ok()
        {
            let _ = tokio::io::copy_bidirectional(&mut s, &mut up).await;
        }
        return;
    }
    heard.record(&head);
    heard.record(&rest);
    if s.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]).await.is_ok() {
        listen(&mut s, heard).await;
    }
}

fn tls_acceptor() -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])?.self_signed(&key)?;
    let config = rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(
        vec![cert.der().clone()],
        rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).map_err(anyhow::Error::msg)?,
    )?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// How a fake MariaDB/MySQL server asks for the clear-text password.
#[derive(Clone, Copy, Debug)]
pub enum MysqlAsk {
    /// Its first packet names `mysql_clear_password`.
    Handshake,
    /// Its first packet names `mysql_native_password`; it then switches to `mysql_clear_password`.
    Switch,
}

/// A MariaDB server that asks every client for the password in clear text. With `first_to`, the first
/// connection (the agent's connection test) is passed through to that real server.
pub async fn mysql(ask: MysqlAsk, first_to: Option<SocketAddr>) -> anyhow::Result<(SocketAddr, Heard)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let heard = Heard::default();
    let h = heard.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let n = h.conns.fetch_add(1, Ordering::SeqCst);
            let h = h.clone();
            tokio::spawn(async move {
                if let (0, Some(real)) = (n, first_to) {
                    if let Ok(mut up) = TcpStream::connect(real).await {
                        let _ = tokio::io::copy_bidirectional(&mut s, &mut up).await;
                    }
                    return;
                }
                let first = match ask {
                    MysqlAsk::Handshake => "mysql_clear_password",
                    MysqlAsk::Switch => "mysql_native_password",
                };
                if s.write_all(&packet(0, &handshake(first))).await.is_err() {
                    return;
                }
                if let MysqlAsk::Switch = ask {
                    // The client's handshake response, then the switch.
                    let mut head = [0u8; 4];
                    if s.read_exact(&mut head).await.is_err() {
                        return;
                    }
                    let len = usize::from(head[0]) | usize::from(head[1]) << 8 | usize::from(head[2]) << 16;
                    let mut body = vec![0u8; len.min(1 << 16)];
                    if s.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    h.record_all(&[&head, &body]);
                    let mut switch = vec![0xfe];
                    switch.extend(b"mysql_clear_password\0");
                    if s.write_all(&packet(head[3].wrapping_add(1), &switch)).await.is_err() {
                        return;
                    }
                }
                listen(&mut s, &h).await;
            });
        }
    });
    Ok((addr, heard))
}

impl Heard {
    fn record_all(&self, parts: &[&[u8]]) {
        for p in parts {
            self.record(p);
        }
    }
}

fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut p = vec![(len & 0xff) as u8, (len >> 8 & 0xff) as u8, (len >> 16 & 0xff) as u8, seq];
    p.extend_from_slice(payload);
    p
}

/// A v10 initial handshake naming `plugin` (capabilities include protocol 4.1, secure connection and plugin
/// auth, not TLS).
fn handshake(plugin: &str) -> Vec<u8> {
    let mut p = vec![10];
    p.extend(b"10.11.0-MariaDB-fake\0");
    p.extend(7u32.to_le_bytes());
    p.extend(b"abcdefgh\0");
    p.extend(0xf7ffu16.to_le_bytes());
    p.push(45);
    p.extend(2u16.to_le_bytes());
    p.extend(0x81bfu16.to_le_bytes());
    p.push(21);
    p.extend([0u8; 10]);
    p.extend(b"ijklmnopqrst\0");
    p.extend(plugin.as_bytes());
    p.push(0);
    p
}
