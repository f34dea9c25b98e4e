//! Fixed fault trials in the CI suite, through the same harness as the randomized `dg-faults` run: the
//! real controller binary (two replicas behind a balancer), the real agent binary, a private PostgreSQL and
//! Redis for the controllers. Each fault strikes mid-execution; nothing may be lost, stuck, leaked or
//! doubled, and a backup interrupted by the agent's death is retried, not failed.

use dg_proto::v1 as pb;
use dg_tests::faults::{self, Fault, Op, RunOptions, Timings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_and_controller_faults_lose_nothing_and_leave_nothing_behind() -> anyhow::Result<()> {
    dg_tests::init_logging();
    let opts = RunOptions {
        trials: 5,
        seed: 7,
        faults: vec![
            Fault::AgentKill(Op::Backup),
            Fault::AgentPause(Op::Backup),
            Fault::ControllerRestart { replicas: 2 },
            Fault::DroppedReport,
            Fault::AgentKill(Op::Restore),
        ],
        data_mib: 16,
        timings: Timings::default(),
    };
    let mut lines = Vec::new();
    let report = faults::run(&opts, |l| lines.push(l.to_owned())).await?;
    let log = lines.join("\n");
    assert!(report.clean(), "{log}\n{}\n{:?}", report.table(), report.leaked);
    let kill = &report.trials[0];
    assert_ne!(kill.point, "after the end", "the kill struck mid-backup:\n{log}");
    let end = kill.end.as_ref().ok_or_else(|| anyhow::anyhow!("no end:\n{log}"))?;
    assert_eq!(end.status, pb::ExecutionStatus::Completed as i32, "retried, not failed:\n{log}");
    assert_eq!(end.attempt, 2, "the killed attempt was ended and the next one completed:\n{log}");
    for t in &report.trials[1..4] {
        let end = t.end.as_ref().ok_or_else(|| anyhow::anyhow!("no end:\n{log}"))?;
        assert_eq!(end.status, pb::ExecutionStatus::Completed as i32, "{}:\n{log}", t.fault);
    }
    Ok(())
}
