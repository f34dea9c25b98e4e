//! Agent errors: one enum for the connection layer, one for job execution. Cancellation is its own variant.

/// Result of job execution.
pub type PipelineResult<T> = Result<T, PipelineError>;

/// Why a backup or restore failed. Messages are shown to operators: no secrets.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The task is malformed or asks for something this agent cannot do.
    #[error("{0}")]
    Invalid(String),
    /// The database could not be reached or refused the login.
    #[error("connection test failed: {0}")]
    Connection(String),
    /// A dump or restore tool failed.
    #[error("{0}")]
    Tool(String),
    /// An object store failed.
    #[error("storage {storage}: {message}")]
    Storage {
        /// Storage id.
        storage: String,
        /// What happened.
        message: String,
    },
    /// Stored data does not match its recorded checksum or size.
    #[error("{0}")]
    Integrity(String),
    /// Local I/O.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Stopped by a Cancel or by shutdown.
    #[error("cancelled")]
    Cancelled,
}

/// Connection-layer errors (enroll, session).
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// Bad local state or arguments.
    #[error("{0}")]
    Config(String),
    /// TLS or pinning failure.
    #[error("tls: {0}")]
    Tls(String),
    /// Transport failure.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The controller answered with an error.
    #[error("controller: {} ({:?})", .0.message(), .0.code())]
    Status(#[from] tonic::Status),
    /// Local I/O.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}
