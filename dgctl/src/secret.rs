//! Where secrets come from: never a plain flag value (it would land in shell history), but an environment
//! variable, a file, or standard input. The YAML of `dgctl apply` holds only references (`{env: VAR}`,
//! `{file: PATH}`); an inline string is refused.

use std::{io::Read as _, path::PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{CliError, CliResult};

/// `--<name>-env VAR`, `--<name>-file F`, `--<name>-stdin` for one secret.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct PasswordArgs {
    /// Read the password from this environment variable.
    #[arg(long, value_name = "VAR", conflicts_with_all = ["password_file", "password_stdin"])]
    pub password_env: Option<String>,
    /// Read the password from this file (trailing newline stripped).
    #[arg(long, value_name = "FILE", conflicts_with = "password_stdin")]
    pub password_file: Option<PathBuf>,
    /// Read the password from standard input (trailing newline stripped).
    #[arg(long)]
    pub password_stdin: bool,
}

impl PasswordArgs {
    /// The secret, when one of the flags was given.
    pub fn read(&self) -> CliResult<Option<String>> {
        if let Some(var) = &self.password_env {
            return SecretRef::Env { env: var.clone() }.read("--password-env").map(Some);
        }
        if let Some(f) = &self.password_file {
            return SecretRef::File { file: f.clone() }.read("--password-file").map(Some);
        }
        if self.password_stdin {
            return read_stdin().map(Some);
        }
        Ok(None)
    }
}

/// `--secret-env VAR`, `--secret-file F`, `--secret-stdin` for a storage key or a channel secret.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct SecretArgs {
    /// Read the secret (S3 secret key, GCS service account JSON, Azure key, webhook secret…) from this
    /// environment variable.
    #[arg(long, value_name = "VAR", conflicts_with_all = ["secret_file", "secret_stdin"])]
    pub secret_env: Option<String>,
    /// Read the secret from this file.
    #[arg(long, value_name = "FILE", conflicts_with = "secret_stdin")]
    pub secret_file: Option<PathBuf>,
    /// Read the secret from standard input.
    #[arg(long)]
    pub secret_stdin: bool,
}

impl SecretArgs {
    /// The secret, when one of the flags was given.
    pub fn read(&self) -> CliResult<Option<String>> {
        PasswordArgs {
            password_env: self.secret_env.clone(),
            password_file: self.secret_file.clone(),
            password_stdin: self.secret_stdin,
        }
        .read()
    }
}

/// All of standard input, without the trailing newline.
pub fn read_stdin() -> CliResult<String> {
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s)?;
    Ok(trim_newline(s))
}

fn trim_newline(mut s: String) -> String {
    while s.ends_with('\n') || s.ends_with('\r') {
        s.pop();
    }
    s
}

/// A secret reference in a declarative file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SecretRef {
    /// `{env: VAR}`.
    Env {
        /// Variable name.
        env: String,
    },
    /// `{file: PATH}`.
    File {
        /// Path of the file.
        file: PathBuf,
    },
    /// A plain string: refused (see [`SecretRef::read`]); kept as a variant so the error can name the field.
    Inline(String),
}

impl SecretRef {
    /// Refuses an inline secret without reading anything; `field` names it in the error (never the value).
    pub fn check(&self, field: &str) -> CliResult<()> {
        match self {
            SecretRef::Inline(_) => Err(CliError::local(format!(
                "{field}: inline secrets are refused; write {{env: VAR}} or {{file: PATH}} instead"
            ))),
            _ => Ok(()),
        }
    }

    /// The secret's value; `field` names it in errors (never the value).
    pub fn read(&self, field: &str) -> CliResult<String> {
        match self {
            SecretRef::Env { env } => std::env::var(env)
                .map_err(|_| CliError::local(format!("{field}: environment variable {env} is not set"))),
            SecretRef::File { file } => std::fs::read_to_string(file)
                .map(trim_newline)
                .map_err(|e| CliError::local(format!("{field}: {}: {e}", file.display()))),
            SecretRef::Inline(_) => Err(CliError::local(format!(
                "{field}: inline secrets are refused; write {{env: VAR}} or {{file: PATH}} instead"
            ))),
        }
    }
}

/// A password from `args`, else a prompt (asked twice) on the terminal; without either it is a usage error.
pub fn password_or_prompt(args: &PasswordArgs, prompt: &str) -> CliResult<String> {
    if let Some(p) = args.read()? {
        return Ok(p);
    }
    use std::io::IsTerminal as _;
    if !std::io::stdin().is_terminal() {
        return Err(CliError::Usage(format!(
            "{prompt}: use --password-env, --password-file, --password-stdin or a terminal"
        )));
    }
    dialoguer::Password::new()
        .with_prompt(prompt)
        .with_confirmation("Repeat it", "the two entries differ")
        .interact()
        .map_err(|e| CliError::local(format!("password: {e}")))
}
