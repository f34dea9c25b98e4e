//! Keeping MariaDB/MySQL passwords out of clear text when TLS does not verify the server (modes `disable`,
//! `prefer`, `require`). Two clients need it:
//! - The client tools (`mariadb-dump`, `mariadb`, `mysqldump`, `mysql`) load `mysql_clear_password` (and
//!   `dialog`, which sends what it is asked in clear) as plugins. They are pointed at a [`PluginDir`] holding
//!   links to every client plugin of the host but those, so a server asking for either gets an error.
//!   Oracle's client also refuses clear text unless enabled, and the agent removes the variable that enables it.
//! - The driver (sqlx) refuses a switch to `mysql_clear_password` but answers a server whose first packet
//!   names it with the password itself. Its connections go through a [`HandshakeGuard`] on loopback that
//!   reads the server's first packet and ends the connection if it names a clear-text plugin, then relays
//!   bytes both ways untouched (TLS, when used, stays between the driver and the server).

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

/// Client plugins that send the password (or any answer) in clear text.
pub const CLEARTEXT_PLUGINS: [&str; 2] = ["mysql_clear_password", "dialog"];

/// Where distributions install the client plugins (`*` is the multiarch triplet).
const PLUGIN_DIRS: [&str; 5] = [
    "/usr/lib/*/libmariadb3/plugin",
    "/usr/lib64/mariadb/plugin",
    "/usr/lib/mysql/plugin",
    "/usr/lib64/mysql/plugin",
    "/usr/lib/*/mariadb19/plugin",
];

/// Why a connection was refused.
pub fn cleartext_refused(host: &str, port: u16, plugin: &str) -> String {
    format!(
        "the DataGuardian agent refused to send the password to {host}:{port}: the server asked for it in clear \
         text ({plugin}) and TLS does not verify the server (use another authentication plugin on the server, or \
         tls_mode verify-full)"
    )
}

/// A directory of links to the host's client plugins without the clear-text ones; removed on drop.
pub struct PluginDir {
    dir: tempfile::TempDir,
}

impl PluginDir {
    /// Builds the directory in `parent` (the agent's credentials directory) or the system's temporary one.
    pub fn create(parent: Option<&Path>) -> std::io::Result<Self> {
        let mut b = tempfile::Builder::new();
        b.prefix("dg-myplugins-");
        let dir = match parent {
            Some(p) => b.tempdir_in(p)?,
            None => b.tempdir()?,
        };
        for source in plugin_dirs() {
            let Ok(entries) = std::fs::read_dir(&source) else { continue };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let stem = Path::new(&name).file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_owned();
                if CLEARTEXT_PLUGINS.contains(&stem.as_str()) || dir.path().join(&name).exists() {
                    continue;
                }
                std::os::unix::fs::symlink(entry.path(), dir.path().join(&name))?;
            }
        }
        Ok(Self { dir })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

fn plugin_dirs() -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for pattern in PLUGIN_DIRS {
        match pattern.split_once('*') {
            None => out.push(pattern.into()),
            Some((head, tail)) => {
                let Ok(entries) = std::fs::read_dir(head) else { continue };
                for e in entries.flatten() {
                    out.push(e.path().join(tail.trim_start_matches('/')));
                }
            }
        }
    }
    out.retain(|p| p.is_dir());
    out
}

/// A relay on loopback that checks the server's first packet for the driver; stops on drop.
pub struct HandshakeGuard {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for HandshakeGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HandshakeGuard {
    /// Starts a relay to `host:port`.
    pub async fn start(host: &str, port: u16) -> std::io::Result<Self> {
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let target = Arc::new((host.to_owned(), port));
        let task = tokio::spawn(async move {
            while let Ok((client, peer)) = listener.accept().await {
                if !peer.ip().is_loopback() {
                    continue;
                }
                let target = target.clone();
                tokio::spawn(async move {
                    if let Err(e) = relay(client, &target.0, target.1).await {
                        tracing::debug!(error = %e, "MariaDB/MySQL guard connection ended");
                    }
                });
            }
        });
        Ok(Self { addr, task })
    }

    /// The loopback port the driver connects to.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

async fn relay(mut client: TcpStream, host: &str, port: u16) -> std::io::Result<()> {
    let mut server = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect((host, port)))
        .await
        .map_err(|_| std::io::Error::other(format!("{host}:{port} did not answer within 10 s")))??;
    server.set_nodelay(true)?;
    client.set_nodelay(true)?;
    let mut head = [0u8; 4];
    server.read_exact(&mut head).await?;
    let len = usize::from(head[0]) | usize::from(head[1]) << 8 | usize::from(head[2]) << 16;
    if len > 64 * 1024 {
        return Err(std::io::Error::other(format!("{host}:{port} sent an oversized first packet")));
    }
    let mut payload = vec![0u8; len];
    server.read_exact(&mut payload).await?;
    if let Some(plugin) = handshake_plugin(&payload).filter(|p| CLEARTEXT_PLUGINS.contains(&p.as_str())) {
        tracing::warn!(host, port, plugin, "refused a clear-text password request");
        let message = cleartext_refused(host, port, &plugin);
        let _ = client.write_all(&error_packet(&message)).await;
        return Err(std::io::Error::other(message));
    }
    client.write_all(&head).await?;
    client.write_all(&payload).await?;
    tokio::io::copy_bidirectional(&mut client, &mut server).await?;
    Ok(())
}

/// An ERR packet (1251, "client does not support authentication protocol") in place of the handshake.
fn error_packet(message: &str) -> Vec<u8> {
    let mut payload = vec![0xff];
    payload.extend(1251u16.to_le_bytes());
    payload.extend(b"#08004");
    payload.extend(message.as_bytes());
    let len = payload.len().min(0xff_ffff);
    let mut p = vec![(len & 0xff) as u8, (len >> 8 & 0xff) as u8, (len >> 16 & 0xff) as u8, 0];
    p.extend_from_slice(&payload[..len]);
    p
}

/// A hint for a client tool's error about a clear-text plugin it could not load (it was left out of the
/// [`PluginDir`]).
pub fn tool_hint(line: &str) -> Option<&'static str> {
    let named =
        |p: &str| [format!("'{p}'"), format!("Plugin {p} "), format!("/{p}.so")].iter().any(|n| line.contains(n));
    (CLEARTEXT_PLUGINS.iter().any(|p| named(p)) && line.to_lowercase().contains("plugin")).then_some(
        "the server asked for the password in clear text and the DataGuardian agent refused to send the password, \
         as TLS does not verify the server (use another authentication plugin on the server, or tls_mode verify-full)",
    )
}

/// The authentication plugin a v10 initial handshake names, if any.
pub fn handshake_plugin(p: &[u8]) -> Option<String> {
    const CLIENT_PLUGIN_AUTH: u32 = 0x0008_0000;
    const CLIENT_SECURE_CONNECTION: u32 = 0x0000_8000;
    if p.first() != Some(&10) {
        return None;
    }
    let version_end = 1 + p.get(1..)?.iter().position(|b| *b == 0)?;
    let mut i = version_end + 1 + 4 + 8 + 1; // NUL, connection id, scramble part 1, filler
    let caps_low = u32::from(u16::from_le_bytes([*p.get(i)?, *p.get(i + 1)?]));
    i += 2 + 1 + 2; // capabilities (low), charset, status
    let caps_high = u32::from(u16::from_le_bytes([*p.get(i)?, *p.get(i + 1)?]));
    let caps = caps_low | caps_high << 16;
    i += 2;
    let scramble_len = usize::from(*p.get(i)?);
    i += 1 + 10; // length, reserved
    if caps & CLIENT_SECURE_CONNECTION != 0 {
        i += scramble_len.saturating_sub(8).max(13);
    }
    if caps & CLIENT_PLUGIN_AUTH == 0 {
        return None;
    }
    let rest = p.get(i..)?;
    let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
    Some(String::from_utf8_lossy(&rest[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v10 handshake naming `plugin`.
    fn handshake(plugin: &str) -> Vec<u8> {
        let mut p = vec![10];
        p.extend(b"11.4.0-MariaDB\0");
        p.extend(7u32.to_le_bytes());
        p.extend(b"abcdefgh\0");
        p.extend(0xf7ffu16.to_le_bytes());
        p.push(45);
        p.extend(2u16.to_le_bytes());
        p.extend(0x81bfu16.to_le_bytes()); // includes PLUGIN_AUTH (0x0008 << 16)
        p.push(21);
        p.extend([0u8; 10]);
        p.extend(b"ijklmnopqrst\0");
        p.extend(plugin.as_bytes());
        p.push(0);
        p
    }

    #[test]
    fn a_tool_error_about_a_left_out_plugin_gets_the_reason() {
        let libmariadb = "mariadb-dump: Got error: 2013: \"Plugin mysql_clear_password could not be loaded: \
                          /x/dg-myplugins-1/mysql_clear_password.so: cannot open shared object file\" when trying to connect";
        assert!(tool_hint(libmariadb).is_some_and(|h| h.contains("refused to send the password")));
        assert!(tool_hint("Authentication plugin 'dialog' cannot be loaded").is_some());
        assert_eq!(tool_hint("Access denied for user 'app'@'localhost' (using password: YES)"), None);
        assert_eq!(tool_hint("the dialog plugin is fine"), None);
    }

    #[test]
    fn the_first_packet_names_its_plugin() {
        assert_eq!(handshake_plugin(&handshake("mysql_clear_password")).as_deref(), Some("mysql_clear_password"));
        assert_eq!(handshake_plugin(&handshake("mysql_native_password")).as_deref(), Some("mysql_native_password"));
        assert_eq!(handshake_plugin(b"\x0a5.7"), None, "truncated");
        assert_eq!(handshake_plugin(b""), None);
    }

    #[test]
    fn the_plugin_directory_leaves_out_the_clear_text_plugins() {
        let d = PluginDir::create(None).expect("plugin dir");
        let names: Vec<String> = std::fs::read_dir(d.path())
            .expect("read")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.starts_with("mysql_clear_password") && !n.starts_with("dialog.")), "{names:?}");
        let host_has = |n: &str| plugin_dirs().iter().any(|d| d.join(n).exists());
        for kept in ["caching_sha2_password.so", "client_ed25519.so", "sha256_password.so"] {
            assert_eq!(names.iter().any(|n| n == kept), host_has(kept), "{kept} is linked when the host has it");
        }
    }
}
