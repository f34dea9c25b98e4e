//! One mapping from errors to gRPC codes. Each layer's error enum implements [`ServiceError`] once; handlers
//! turn any of them into a `tonic::Status` with [`to_status`] and never build statuses by hand.

use tonic::{Code, Status};

/// The small set of outcomes a caller can act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// The request is malformed; the message names the field.
    InvalidArgument,
    /// Missing or bad credentials.
    Unauthenticated,
    /// Authenticated but not allowed.
    PermissionDenied,
    /// An id that does not exist.
    NotFound,
    /// A unique name or one-time thing already used.
    AlreadyExists,
    /// The system is not in a state that allows this.
    FailedPrecondition,
    /// Too many attempts.
    ResourceExhausted,
    /// A dependency is down; retry later.
    Unavailable,
    /// The operation was cancelled or the process is shutting down.
    Cancelled,
    /// Stored data is missing or corrupt.
    DataLoss,
    /// A bug or an unexpected failure; details are logged, not returned.
    Internal,
}

impl ErrorCode {
    /// The gRPC code.
    pub fn grpc(self) -> Code {
        match self {
            ErrorCode::InvalidArgument => Code::InvalidArgument,
            ErrorCode::Unauthenticated => Code::Unauthenticated,
            ErrorCode::PermissionDenied => Code::PermissionDenied,
            ErrorCode::NotFound => Code::NotFound,
            ErrorCode::AlreadyExists => Code::AlreadyExists,
            ErrorCode::FailedPrecondition => Code::FailedPrecondition,
            ErrorCode::ResourceExhausted => Code::ResourceExhausted,
            ErrorCode::Unavailable => Code::Unavailable,
            ErrorCode::Cancelled => Code::Cancelled,
            ErrorCode::DataLoss => Code::DataLoss,
            ErrorCode::Internal => Code::Internal,
        }
    }
}

/// Implemented once by every error enum that can reach a gRPC caller.
pub trait ServiceError: std::error::Error {
    /// The code the caller sees.
    fn error_code(&self) -> ErrorCode;
}

/// Converts a service error into a status. Internal errors are logged here (where they are handled) and
/// returned without details, so no database message or secret leaks to a caller.
pub fn to_status<E: ServiceError>(err: E) -> Status {
    let code = err.error_code();
    if code == ErrorCode::Internal {
        tracing::error!(error = %err, "internal error");
        Status::internal("internal error")
    } else {
        Status::new(code.grpc(), err.to_string())
    }
}

/// A request field failed validation. Its message always starts with the field name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {reason}")]
pub struct FieldError {
    /// The offending field, as named in the `.proto` file.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl FieldError {
    /// A field error.
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self { field, reason: reason.into() }
    }
}

impl ServiceError for FieldError {
    fn error_code(&self) -> ErrorCode {
        ErrorCode::InvalidArgument
    }
}

impl From<FieldError> for Status {
    fn from(e: FieldError) -> Self {
        to_status(e)
    }
}
