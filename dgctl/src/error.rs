//! dgctl's one error type and its exit codes (the scripting contract documented in the README):
//! 0 ok, 1 anything else, 2 usage, 3 not found, 4 permission denied or unauthenticated, 5 an execution that
//! failed or was cancelled, 6 approval required (the message names the pending approval; repeat the command
//! with `--approval ID` once another user approved it). gRPC statuses are mapped here once, nowhere else.

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
            CliError::Grpc(s) if approval_required(s).is_some() => 6,
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

/// The approval id of a FAILED_PRECONDITION that says a critical call waits for an approval.
pub fn approval_required(s: &tonic::Status) -> Option<String> {
    if s.code() != Code::FailedPrecondition {
        return None;
    }
    let rest = s.message().strip_prefix("approval required: approval ")?;
    let id: String = rest.chars().take_while(|c| c.is_ascii_hexdigit() || *c == '-').collect();
    (!id.is_empty()).then_some(id)
}

/// `NOT_FOUND: no datasource "x"` plus a hint for the statuses an operator can act on.
fn describe_status(s: &tonic::Status) -> String {
    if let Some(id) = approval_required(s) {
        return format!(
            "approval required: approval {id} is pending.\n\
             Ask another user with approval.decide to run `dgctl approvals approve {id}`, then repeat this \
             command with `--approval {id}`."
        );
    }
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
        let gated = tonic::Status::failed_precondition(
            "approval required: approval 0b7c3f52-1c1e-4d7e-9d0e-1f2a3b4c5d6e is pending; once another user \
             with approval.decide approves it, repeat the same call with the metadata `dg-approval: …`",
        );
        assert_eq!(approval_required(&gated).as_deref(), Some("0b7c3f52-1c1e-4d7e-9d0e-1f2a3b4c5d6e"));
        let e = CliError::Grpc(gated);
        assert_eq!(e.exit_code(), 6);
        assert!(e.to_string().contains("--approval 0b7c3f52-1c1e-4d7e-9d0e-1f2a3b4c5d6e"), "{e}");
        assert_eq!(CliError::ExecutionFailed("f".into()).exit_code(), 5);
    }

    #[test]
    fn status_text_uses_grpc_code_names() {
        let s = tonic::Status::failed_precondition("datasource has backups");
        assert_eq!(CliError::Grpc(s).to_string(), "FAILED_PRECONDITION: datasource has backups");
        assert_eq!(code_name("DataLoss"), "DATA_LOSS");
    }
}
