//! The PostgreSQL authentication guard: when TLS does not verify the server (modes `disable`, `prefer`,
//! `require`), the agent's PostgreSQL clients (libpq tools and the driver) connect to a listener on loopback
//! instead of the server. For each connection the guard opens the server connection itself (negotiating TLS
//! as the mode says, without verifying the certificate, as libpq does in those modes), forwards the client's
//! bytes, and reads the server's messages until authentication ends. A server asking for the password in
//! clear text (`AuthenticationCleartextPassword`) gets nothing: the guard answers the client with a
//! `FATAL` error naming the reason and closes both sides. SCRAM, MD5 and the rest pass through; after
//! `AuthenticationOk` the guard copies bytes both ways. libpq 16's `require_auth` does the same in the
//! client, but Debian 12's libpq 15 and the Rust driver have no such switch, so the agent does it itself.
//!
//! With `verify-full` the clients connect to the server directly: a verified server may ask for the
//! password in clear text.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use dg_common::protocol::TlsMode;
use rustls::{
    client::danger::ServerCertVerified,
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

use crate::verifier::CheckedBy;

/// The first message of a TLS negotiation (`SSLRequest`).
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
/// Largest server message accepted before authentication ends (SASL challenges and errors are small).
const MAX_AUTH_MESSAGE: usize = 64 * 1024;
/// `AuthenticationOk`, `AuthenticationCleartextPassword`.
const AUTH_OK: u32 = 0;
const AUTH_CLEARTEXT: u32 = 3;

/// Why the guard ended a connection before authentication; sent to the client as a `FATAL` error.
pub fn cleartext_refused(host: &str, port: u16) -> String {
    format!(
        "the DataGuardian agent refused to send the password to {host}:{port}: the server asked for it in clear \
         text and TLS does not verify the server (use SCRAM or MD5 authentication on the server, or tls_mode \
         verify-full)"
    )
}

/// A listener on loopback standing between the agent's PostgreSQL clients and one server; stops on drop.
pub struct PgGuard {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for PgGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PgGuard {
    /// Starts a guard for `host:port` reached with `mode` (not `verify-full`).
    pub async fn start(host: &str, port: u16, mode: TlsMode) -> std::io::Result<Self> {
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let upstream = Arc::new(Upstream { host: host.to_owned(), port, mode });
        let task = tokio::spawn(async move {
            while let Ok((client, peer)) = listener.accept().await {
                // Only this host's processes can reach a loopback port; the agent's own clients are the
                // ones that know it.
                if !peer.ip().is_loopback() {
                    continue;
                }
                let up = upstream.clone();
                tokio::spawn(async move {
                    if let Err(e) = up.serve(client).await {
                        tracing::debug!(error = %e, "PostgreSQL guard connection ended");
                    }
                });
            }
        });
        Ok(Self { addr, task })
    }

    /// The loopback port the clients connect to.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

struct Upstream {
    host: String,
    port: u16,
    mode: TlsMode,
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

impl Upstream {
    async fn serve(&self, mut client: TcpStream) -> std::io::Result<()> {
        client.set_nodelay(true)?;
        let server = match self.connect().await {
            Ok(s) => s,
            Err(e) => {
                let _ = client.write_all(&fatal("08001", &e.to_string())).await;
                return Err(e);
            }
        };
        let (mut sr, mut sw) = tokio::io::split(server);
        let (mut cr, mut cw) = client.into_split();
        let up = tokio::spawn(async move {
            let _ = tokio::io::copy(&mut cr, &mut sw).await;
            let _ = sw.shutdown().await;
        });
        let outcome = self.until_authenticated(&mut sr, &mut cw).await;
        match outcome {
            Ok(true) => {
                let _ = tokio::io::copy(&mut sr, &mut cw).await;
                let _ = cw.shutdown().await;
                let _ = up.await;
                Ok(())
            }
            Ok(false) => {
                up.abort();
                Ok(())
            }
            Err(e) => {
                up.abort();
                let _ = cw.write_all(&fatal("28000", &e.to_string())).await;
                Err(e)
            }
        }
    }

    /// Opens the server connection, with TLS as the mode says.
    async fn connect(&self) -> std::io::Result<Box<dyn Stream>> {
        let unreachable = |e: String| std::io::Error::other(format!("{}:{}: {e}", self.host, self.port));
        let mut tcp =
            tokio::time::timeout(Duration::from_secs(10), TcpStream::connect((self.host.as_str(), self.port)))
                .await
                .map_err(|_| unreachable("did not answer within 10 s".into()))?
                .map_err(|e| unreachable(e.to_string()))?;
        tcp.set_nodelay(true)?;
        if self.mode == TlsMode::Disable {
            return Ok(Box::new(tcp));
        }
        tcp.write_all(&SSL_REQUEST).await?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await?;
        match (answer[0], self.mode) {
            (b'S', _) => {
                let config = unverified_tls()?;
                let name = ServerName::try_from(self.host.clone()).map_err(|e| unreachable(e.to_string()))?;
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| unreachable(format!("TLS: {e}")))?;
                Ok(Box::new(tls))
            }
            (b'N', TlsMode::Prefer) => Ok(Box::new(tcp)),
            (b'N', _) => Err(unreachable("the server does not support TLS and tls_mode is require".into())),
            _ => Err(unreachable("the server answered the TLS request with something else".into())),
        }
    }

    /// Forwards the server's messages to the client until authentication ends: `Ok(true)` after
    /// `AuthenticationOk`, `Ok(false)` when the server closed first (an error was forwarded), and an error
    /// (sent to the client) when the server asked for a clear-text password or sent something malformed.
    async fn until_authenticated(
        &self,
        server: &mut (impl AsyncRead + Unpin),
        client: &mut (impl AsyncWrite + Unpin),
    ) -> std::io::Result<bool> {
        loop {
            let mut head = [0u8; 5];
            match server.read_exact(&mut head).await {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
                Err(e) => return Err(e),
            }
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            if !(4..=MAX_AUTH_MESSAGE).contains(&len) {
                return Err(std::io::Error::other(format!(
                    "{}:{} sent a malformed message during authentication",
                    self.host, self.port
                )));
            }
            let mut body = vec![0u8; len - 4];
            server.read_exact(&mut body).await?;
            let code =
                (head[0] == b'R' && body.len() >= 4).then(|| u32::from_be_bytes([body[0], body[1], body[2], body[3]]));
            if code == Some(AUTH_CLEARTEXT) {
                tracing::warn!(host = %self.host, port = self.port, "refused a clear-text password request");
                return Err(std::io::Error::other(cleartext_refused(&self.host, self.port)));
            }
            client.write_all(&head).await?;
            client.write_all(&body).await?;
            if code == Some(AUTH_OK) {
                return Ok(true);
            }
        }
    }
}

/// An `ErrorResponse` of severity FATAL.
fn fatal(sqlstate: &str, message: &str) -> Vec<u8> {
    let mut fields = Vec::new();
    for (tag, value) in [(b'S', "FATAL"), (b'V', "FATAL"), (b'C', sqlstate), (b'M', message)] {
        fields.push(tag);
        fields.extend(value.bytes().filter(|b| *b != 0));
        fields.push(0);
    }
    fields.push(0);
    let mut out = vec![b'E'];
    out.extend(u32::try_from(fields.len() + 4).unwrap_or(u32::MAX).to_be_bytes());
    out.extend(fields);
    out
}

/// TLS that encrypts but does not verify the server, as libpq's `prefer` and `require` modes.
fn unverified_tls() -> std::io::Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let any = |_: &CertificateDer<'_>, _: &[CertificateDer<'_>], _: &ServerName<'_>, _: &[u8], _: UnixTime| {
        Ok(ServerCertVerified::assertion())
    };
    Ok(Arc::new(CheckedBy::new(provider, Box::new(any)).client_config().map_err(std::io::Error::other)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fatal_error_response_is_well_formed() {
        let m = fatal("28000", "no");
        assert_eq!(m[0], b'E');
        let len = u32::from_be_bytes([m[1], m[2], m[3], m[4]]) as usize;
        assert_eq!(len + 1, m.len());
        assert!(m.ends_with(b"Mno\0\0"));
    }
}
