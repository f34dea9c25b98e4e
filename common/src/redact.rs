//! Secret redaction for text that leaves a process (tool stderr in execution logs, error messages).

/// Replaces every occurrence of each non-empty secret in `text` with `[REDACTED]`.
pub fn redact(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_owned();
    for s in secrets.iter().filter(|s| s.len() >= 3) {
        out = out.replace(s, "[REDACTED]");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redacts_every_occurrence_and_ignores_empty_secrets() {
        assert_eq!(redact("pw=hunter22 again hunter22", &["hunter22", ""]), "pw=[REDACTED] again [REDACTED]");
        assert_eq!(redact("nothing here", &[]), "nothing here");
    }
}
