//! The shipped Prometheus alert rules (deploy/prometheus/alerts.yml) are valid for Prometheus and behave as
//! their unit tests (deploy/prometheus/alerts_test.yml) say, checked with the real `promtool` (unpacked from
//! the Debian `prometheus` package by tests/ensure-services.sh). That every metric they use is exported is a
//! unit test of the controller's metrics module.

use std::{path::PathBuf, process::Command};

fn rules_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus")
}

fn promtool(args: &[&str]) -> anyhow::Result<String> {
    let out =
        Command::new("promtool").args(args).current_dir(rules_dir()).output().map_err(|e| {
            anyhow::anyhow!("promtool not found on PATH ({e}); run tests/ensure-services.sh --for tests")
        })?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    anyhow::ensure!(out.status.success(), "promtool {args:?} failed:\n{text}");
    Ok(text)
}

#[test]
fn shipped_alert_rules_are_valid_and_fire_as_their_unit_tests_say() -> anyhow::Result<()> {
    let checked = promtool(&["check", "rules", "alerts.yml"])?;
    assert!(checked.contains("SUCCESS: 8 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", "alerts_test.yml"])?;
    assert!(tested.contains("SUCCESS"), "{tested}");

    // The unit tests can fail: a rule file whose RPO alert never fires is caught.
    let dir = tempfile::tempdir()?;
    let broken = std::fs::read_to_string(rules_dir().join("alerts.yml"))?.replace(
        "max by (job_id, job_name) (dg_job_rpo_breached) == 1",
        "max by (job_id, job_name) (dg_job_rpo_breached) == 2",
    );
    std::fs::write(dir.path().join("alerts.yml"), broken)?;
    std::fs::copy(rules_dir().join("alerts_test.yml"), dir.path().join("alerts_test.yml"))?;
    let out = Command::new("promtool").args(["test", "rules", "alerts_test.yml"]).current_dir(dir.path()).output()?;
    assert!(!out.status.success(), "a broken rule must fail its unit test");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("DataGuardianRpoBreached"), "{said}");
    Ok(())
}
