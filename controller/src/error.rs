//! The controller's error type and its single mapping to gRPC codes.

use dg_common::error::{ErrorCode, FieldError, ServiceError};
use sea_orm::{DbErr, SqlErr};

use crate::crypto::CryptoError;

/// Result of controller operations.
pub type ControllerResult<T> = Result<T, ControllerError>;

/// Everything a controller operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// A request field is invalid.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// Missing or bad credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// Authenticated, but not allowed to do this (an agent sending another agent's object).
    #[error("{0}")]
    PermissionDenied(String),
    /// Unknown id; the message names the kind and id.
    #[error("{0} not found")]
    NotFound(String),
    /// A unique name or a one-time value already used.
    #[error("{0}")]
    AlreadyExists(String),
    /// The state does not allow the operation (including lost compare-and-set updates).
    #[error("{0}")]
    FailedPrecondition(String),
    /// Too many attempts.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A dependency is down.
    #[error("{0}")]
    Unavailable(String),
    /// Shutting down.
    #[error("shutting down")]
    Cancelled,
    /// Stored backup data is missing or corrupt.
    #[error("{0}")]
    DataLoss(String),
    /// Database failure (details logged, not returned).
    #[error("database: {0}")]
    Database(DbErr),
    /// Crypto failure (details logged, not returned).
    #[error("crypto: {0}")]
    Crypto(#[from] CryptoError),
    /// Certificate authority failure.
    #[error("pki: {0}")]
    Pki(String),
    /// An agent message that does not decode; names the field.
    #[error(transparent)]
    Protocol(#[from] dg_common::protocol::ProtocolError),
}

/// What a caller is told when PostgreSQL is unreachable or the pool is exhausted.
pub const DB_UNAVAILABLE: &str = "the controller database is unavailable; retry later";

impl From<DbErr> for ControllerError {
    fn from(e: DbErr) -> Self {
        match e.sql_err() {
            Some(SqlErr::UniqueConstraintViolation(_)) => {
                ControllerError::AlreadyExists("an object with this name already exists".into())
            }
            Some(SqlErr::ForeignKeyConstraintViolation(_)) => {
                ControllerError::FailedPrecondition("a referenced object does not exist or is still in use".into())
            }
            // PostgreSQL is unreachable or the pool is exhausted: a retry later can succeed.
            _ if db_unreachable(&e) => ControllerError::Unavailable(DB_UNAVAILABLE.into()),
            _ => ControllerError::Database(e),
        }
    }
}

/// The database could not be reached (pool timeout, connection refused or lost mid-query), as opposed to a
/// query that failed on a working database.
pub fn db_unreachable(e: &DbErr) -> bool {
    use sea_orm::RuntimeErr;
    match e {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Query(RuntimeErr::SqlxError(x)) | DbErr::Exec(RuntimeErr::SqlxError(x)) => matches!(
            **x,
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Tls(_)
        ),
        _ => false,
    }
}

impl From<rcgen::Error> for ControllerError {
    fn from(e: rcgen::Error) -> Self {
        ControllerError::Pki(e.to_string())
    }
}

impl ServiceError for ControllerError {
    fn error_code(&self) -> ErrorCode {
        match self {
            ControllerError::Invalid(_) | ControllerError::Protocol(_) => ErrorCode::InvalidArgument,
            ControllerError::Unauthenticated(_) => ErrorCode::Unauthenticated,
            ControllerError::PermissionDenied(_) => ErrorCode::PermissionDenied,
            ControllerError::NotFound(_) => ErrorCode::NotFound,
            ControllerError::AlreadyExists(_) => ErrorCode::AlreadyExists,
            ControllerError::FailedPrecondition(_) => ErrorCode::FailedPrecondition,
            ControllerError::ResourceExhausted(_) => ErrorCode::ResourceExhausted,
            ControllerError::Unavailable(_) => ErrorCode::Unavailable,
            ControllerError::Cancelled => ErrorCode::Cancelled,
            ControllerError::DataLoss(_) => ErrorCode::DataLoss,
            ControllerError::Database(_) | ControllerError::Crypto(_) | ControllerError::Pki(_) => ErrorCode::Internal,
        }
    }
}

impl From<ControllerError> for tonic::Status {
    fn from(e: ControllerError) -> Self {
        dg_common::error::to_status(e)
    }
}
