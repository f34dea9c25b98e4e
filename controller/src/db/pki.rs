//! Persistence of the certificate authority: one row, the key encrypted under the master key.

use sea_orm::{DbErr, FromQueryResult};

use super::{Db, execute, fetch_one};

/// The stored CA.
#[derive(Debug, FromQueryResult)]
pub struct StoredCa {
    /// CA certificate.
    pub cert_pem: String,
    /// Encrypted PKCS#8 key.
    pub key_ciphertext: Vec<u8>,
}

impl Db {
    /// The CA, when one was created.
    pub async fn load_ca(&self) -> Result<Option<StoredCa>, DbErr> {
        fetch_one(&self.conn, "SELECT cert_pem, key_ciphertext FROM pki_ca WHERE id = 1", []).await
    }

    /// Stores a CA unless another replica stored one first; returns whether this one was kept.
    pub async fn insert_ca(&self, cert_pem: &str, key_ciphertext: Vec<u8>) -> Result<bool, DbErr> {
        let n = execute(
            &self.conn,
            "INSERT INTO pki_ca (id, cert_pem, key_ciphertext) VALUES (1, $1, $2) ON CONFLICT (id) DO NOTHING",
            [cert_pem.into(), key_ciphertext.into()],
        )
        .await?;
        Ok(n == 1)
    }
}
