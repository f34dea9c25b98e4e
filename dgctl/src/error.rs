//! dgctl's one error type and its exit codes (the scripting contract documented in the README):
//! 0 ok, 1 anything else, 2 usage, 3 not found, 4 permission denied or unauthenticated, 5 an execution that
//! failed or was cancelled. gRPC statuses are mapped here once, nowhere else.

use tonic::Code;

/// Everything that can end a dgctl command unsuccessfully.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad invocation that clap could not catch (e.g. a refused confirmation without a TTY).
    #[error("{0}")]
    Usage(String),
    /// A name or id that matches nothing (or several things).
    #[error("{0}")]
    NotFound(String),
    /// Not logged in, an expired session, or a permission the caller lacks.
    #[error("{0}")]
    Denied(String),
    /// An awaited execution ended FAILED or CANCELLED.
    #[error("{0}")]
    ExecutionFailed(String),
    /// The config file, the declarative file or local I/O.
    #[error("{0}")]
    Local(String),
    /// A gRPC call failed.
    #[error("{}", describe_status(.0))]
    Grpc(#[from] tonic::Status),
    /// The connection could not be made.
    #[error("cannot connect to the controller: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Local I/O.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Result of a dgctl operation.
pub type CliResult<T> = Result<T, CliError>;

impl CliError {
    /// The process exit code of this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => 2,
            CliError::NotFound(_) => 3,
            CliError::Denied(_) => 4,
            CliError::ExecutionFailed(_) => 5,
            CliError::Grpc(s) => match s.code() {
                Code::NotFound => 3,
                Code::Unauthenticated | Code::PermissionDenied => 4,
                _ => 1,
            },
            CliError::Local(_) | CliError::Transport(_) | CliError::Io(_) => 1,
        }
    }

    /// A local error with context.
    pub fn local(msg: impl Into<String>) -> Self {
        CliError::Local(msg.into())
    }
}

/// `NOT_FOUND: no datasource "x"` plus a hint for the statuses an operator can act on.
fn describe_status(s: &tonic::Status) -> String {
    let code = format!("{:?}", s.code());
    let code = code_name(&code);
    let hint = match s.code() {
        Code::Unauthenticated => " (log in again: dgctl login)",
        Code::Unavailable => " (is the controller running and reachable?)",
        _ => "",
    };
    let msg = s.message();
    if msg.is_empty() { format!("{code}{hint}") } else { format!("{code}: {msg}{hint}") }
}

/// `NotFound` -> `NOT_FOUND` (the names the gRPC specification and grpcurl use).
fn code_name(debug: &str) -> String {
    let mut out = String::new();
    for (i, ch) in debug.chars().enumerate() {
        if ch.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(ch.to_ascii_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_documented_exit_codes() {
        let cases = [
            (Code::NotFound, 3),
            (Code::Unauthenticated, 4),
            (Code::PermissionDenied, 4),
            (Code::InvalidArgument, 1),
            (Code::FailedPrecondition, 1),
        ];
        for (code, exit) in cases {
            assert_eq!(CliError::Grpc(tonic::Status::new(code, "x")).exit_code(), exit, "{code:?}");
        }
        assert_eq!(CliError::Usage("u".into()).exit_code(), 2);
        assert_eq!(CliError::ExecutionFailed("f".into()).exit_code(), 5);
    }

    #[test]
    fn status_text_uses_grpc_code_names() {
        let s = tonic::Status::failed_precondition("datasource has backups");
        assert_eq!(CliError::Grpc(s).to_string(), "FAILED_PRECONDITION: datasource has backups");
        assert_eq!(code_name("DataLoss"), "DATA_LOSS");
    }
}
