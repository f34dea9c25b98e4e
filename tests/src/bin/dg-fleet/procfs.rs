//! Reading /proc: a process's CPU time (utime + stime of /proc/<pid>/stat), its VmRSS and VmHWM, open
//! descriptors, and this process's descriptor limit. Parsers are plain functions, tested below.

use std::time::Duration;

/// utime + stime (clock ticks) from the text of /proc/<pid>/stat. The command name (field 2) is in
/// parentheses and may hold spaces, so fields are counted after the last `)`: state is field 3, utime 14,
/// stime 15.
pub(crate) fn parse_stat_cpu_ticks(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A `Field:   N kB` line of /proc/<pid>/status, in bytes.
pub(crate) fn parse_status_bytes(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let kb: u64 = l.strip_prefix(field)?.strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse().ok()?;
        Some(kb * 1024)
    })
}

/// The soft `Max open files` of the text of /proc/<pid>/limits.
pub(crate) fn parse_open_files_limit(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

/// CPU time a process has used, as clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> Option<u64> {
    parse_stat_cpu_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// VmRSS (`VmRSS`) or its peak (`VmHWM`) of a process, in bytes.
pub(crate) fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    parse_status_bytes(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?, field)
}

/// Open descriptors of a process.
pub(crate) fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// This process's soft descriptor limit (the controllers it starts inherit it).
pub(crate) fn open_files_limit() -> Option<u64> {
    parse_open_files_limit(&std::fs::read_to_string("/proc/self/limits").ok()?)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100, the Linux value, when that fails).
pub(crate) fn clock_ticks_per_sec() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|t| *t > 0)
        .unwrap_or(100)
}

/// CPU ticks spent over `over`, as % of one core.
pub(crate) fn cpu_percent(ticks: u64, ticks_per_sec: u64, over: Duration) -> f64 {
    if over.is_zero() || ticks_per_sec == 0 {
        return 0.0;
    }
    ticks as f64 / ticks_per_sec as f64 / over.as_secs_f64() * 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse() {
        let stat = "4242 (dg controller) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 75 0 0 20 0 6 0 1000 123456789 \
                    2000 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(325));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
        let status = "Name:\tdg-controller\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\nThreads:\t6\n";
        assert_eq!(parse_status_bytes(status, "VmRSS"), Some(100 * 1024 * 1024));
        assert_eq!(parse_status_bytes(status, "VmHWM"), Some(200 * 1024 * 1024));
        assert_eq!(parse_status_bytes(status, "VmSwap"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             95864                95864                processes \n\
                      Max open files            20000                40000                files     \n";
        assert_eq!(parse_open_files_limit(limits), Some(20_000));
        assert_eq!(cpu_percent(150, 100, Duration::from_secs(30)), 5.0);
        assert_eq!(cpu_percent(150, 100, Duration::ZERO), 0.0);
    }
}
