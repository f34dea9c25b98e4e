//! Pure figures: percentiles of latency samples, the plan of session counts to step through, where each
//! simulated agent's heartbeat falls within the interval, and the source address of each enrollment. No I/O;
//! unit-tested below.

use std::{net::Ipv4Addr, time::Duration};

/// Nearest-rank percentile (`p` in 0..=100) of samples sorted ascending: the smallest sample with at least
/// `p` % of all samples at or below it. `None` without samples.
pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p.clamp(0.0, 100.0) / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// p50, p99 and max of a set of latency samples, with the count of samples that never completed.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Latency {
    /// Completed samples.
    pub(crate) n: usize,
    pub(crate) p50: Option<Duration>,
    pub(crate) p99: Option<Duration>,
    pub(crate) max: Option<Duration>,
    /// Samples that timed out (not in the percentiles).
    pub(crate) timeouts: usize,
}

impl Latency {
    pub(crate) fn of(mut samples: Vec<Duration>, timeouts: usize) -> Self {
        samples.sort();
        Self {
            n: samples.len(),
            p50: percentile(&samples, 50.0),
            p99: percentile(&samples, 99.0),
            max: samples.last().copied(),
            timeouts,
        }
    }

    /// `p50/p99/max ms (n)`, or `-` without samples.
    pub(crate) fn show(&self) -> String {
        let ms = |d: Option<Duration>| d.map(|d| format!("{:.1}", d.as_secs_f64() * 1000.0)).unwrap_or("-".into());
        if self.n == 0 {
            return if self.timeouts > 0 { format!("- ({} timed out)", self.timeouts) } else { "-".into() };
        }
        let t = if self.timeouts > 0 { format!(", {} timed out", self.timeouts) } else { String::new() };
        format!("{}/{}/{} ms (n={}{t})", ms(self.p50), ms(self.p99), ms(self.max), self.n)
    }
}

/// The session counts one replica configuration steps through: 0 (the idle figures) first, then the requested
/// counts ascending and de-duplicated. Counts above `max_sessions` (what the descriptor limit leaves room for)
/// are returned apart, to be reported as not tried.
pub(crate) fn plan_steps(requested: &[u32], max_sessions: usize) -> (Vec<usize>, Vec<usize>) {
    let mut counts: Vec<usize> = requested.iter().filter_map(|n| usize::try_from(*n).ok()).collect();
    counts.sort_unstable();
    counts.dedup();
    let (fit, too_many): (Vec<usize>, Vec<usize>) = counts.into_iter().partition(|n| *n <= max_sessions);
    let mut steps = vec![0];
    steps.extend(fit.into_iter().filter(|n| *n > 0));
    (steps, too_many)
}

/// Walks the planned counts and stops at the first one that broke: what was held and what broke.
#[derive(Debug, Default)]
pub(crate) struct Stepper {
    /// Largest count held through a whole step.
    pub(crate) held: usize,
    /// The count and the error of the step that broke.
    pub(crate) broke: Option<(usize, String)>,
}

impl Stepper {
    /// Whether to go on to the next count.
    pub(crate) fn go_on(&self) -> bool {
        self.broke.is_none()
    }

    /// The step to `count` held.
    pub(crate) fn held(&mut self, count: usize) {
        self.held = self.held.max(count);
    }

    /// The step to `count` broke with `error` (only the first break is kept).
    pub(crate) fn broke(&mut self, count: usize, error: String) {
        self.broke.get_or_insert((count, error));
    }
}

/// Where session `index`'s heartbeats fall within the interval: the fractional part of `index` times the
/// golden ratio, so any prefix of the fleet (the fleet grows step by step) is spread evenly, with gaps of at
/// most about 2.6 / N of the interval (three-gap theorem).
pub(crate) fn heartbeat_offset(index: usize, interval: Duration) -> Duration {
    const GOLDEN_FRACTION: f64 = 0.618_033_988_749_894_9;
    interval.mul_f64((index as f64 * GOLDEN_FRACTION).fract())
}

/// How long from now until the first heartbeat of a session whose phase is `offset` within the interval,
/// counted from the fleet's common start `since_start` ago: sessions opened at different moments still keep
/// their phases, so the spread holds however long the fleet took to open.
pub(crate) fn first_heartbeat_in(since_start: Duration, offset: Duration, interval: Duration) -> Duration {
    if interval.is_zero() {
        return Duration::ZERO;
    }
    let phase = offset.as_nanos() % interval.as_nanos();
    let now = since_start.as_nanos() % interval.as_nanos();
    let wait = (phase + interval.as_nanos() - now) % interval.as_nanos();
    Duration::from_nanos(u64::try_from(wait).unwrap_or(0))
}

/// Source address of enrollment `index`: `per_address` enrollments per loopback address 127.10.x.y
/// (y in 1..=254), because the controller budgets enrollments per client address (a burst, then one every
/// two seconds) and a fleet on one address would take hours to enroll.
pub(crate) fn enroll_source(index: usize, per_address: usize) -> Ipv4Addr {
    let block = index / per_address.max(1);
    let (x, y) = (block / 254, block % 254 + 1);
    Ipv4Addr::new(127, 10, u8::try_from(x % 256).unwrap_or(0), u8::try_from(y).unwrap_or(1))
}

/// `count` per second over `d`.
pub(crate) fn per_sec(count: f64, d: Duration) -> f64 {
    if d.is_zero() { 0.0 } else { count / d.as_secs_f64() }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[ms(7)], 0.0), Some(ms(7)));
        assert_eq!(percentile(&[ms(7)], 99.0), Some(ms(7)));
        let hundred: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(percentile(&hundred, 50.0), Some(ms(50)));
        assert_eq!(percentile(&hundred, 99.0), Some(ms(99)));
        assert_eq!(percentile(&hundred, 100.0), Some(ms(100)));
        assert_eq!(percentile(&hundred, 0.0), Some(ms(1)));
        assert_eq!(percentile(&hundred, 250.0), Some(ms(100)), "clamped");
        // 200 samples: p99 is the 198th, so the two worst are above it.
        let two_hundred: Vec<Duration> = (1..=200).map(ms).collect();
        assert_eq!(percentile(&two_hundred, 99.0), Some(ms(198)));
        assert_eq!(percentile(&[ms(1), ms(2), ms(3)], 50.0), Some(ms(2)));
        assert_eq!(percentile(&[ms(1), ms(2), ms(3), ms(4)], 50.0), Some(ms(2)));

        let l = Latency::of(vec![ms(30), ms(10), ms(20)], 1);
        assert_eq!((l.n, l.p50, l.p99, l.max, l.timeouts), (3, Some(ms(20)), Some(ms(30)), Some(ms(30)), 1));
        assert_eq!(l.show(), "20.0/30.0/30.0 ms (n=3, 1 timed out)");
        assert_eq!(Latency::of(vec![], 0).show(), "-");
        assert_eq!(Latency::of(vec![], 2).show(), "- (2 timed out)");
    }

    #[test]
    fn steps_start_idle_ascend_once_and_stop_at_the_descriptor_limit() {
        assert_eq!(plan_steps(&[100, 1000, 5000, 10_000], 19_000), (vec![0, 100, 1000, 5000, 10_000], vec![]));
        assert_eq!(plan_steps(&[1000, 100, 1000], 19_000), (vec![0, 100, 1000], vec![]));
        assert_eq!(plan_steps(&[100, 30_000, 20_000], 19_000), (vec![0, 100], vec![20_000, 30_000]));
        assert_eq!(plan_steps(&[], 10), (vec![0], vec![]));

        let mut s = Stepper::default();
        for n in [0, 100, 1000] {
            assert!(s.go_on());
            s.held(n);
        }
        s.broke(5000, "connect: tls handshake timed out".into());
        s.broke(10_000, "later".into());
        assert!(!s.go_on());
        assert_eq!(s.held, 1000);
        assert_eq!(s.broke, Some((5000, "connect: tls handshake timed out".into())));
    }

    #[test]
    fn heartbeats_of_any_fleet_prefix_are_spread_over_the_interval() {
        let interval = Duration::from_secs(10);
        for n in [2usize, 10, 100, 1000, 10_000] {
            let mut offsets: Vec<Duration> = (0..n).map(|i| heartbeat_offset(i, interval)).collect();
            assert!(offsets.iter().all(|o| *o < interval));
            offsets.sort();
            offsets.push(interval + offsets[0]); // wrap around
            let widest = offsets.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
            assert!(widest <= interval.mul_f64(2.7 / n as f64), "n={n}: widest gap {widest:?}");
        }
    }

    #[test]
    fn a_late_session_keeps_its_phase() {
        let (i, s) = (Duration::from_secs(10), Duration::from_secs);
        assert_eq!(first_heartbeat_in(s(0), s(3), i), s(3));
        assert_eq!(first_heartbeat_in(s(2), s(3), i), s(1));
        assert_eq!(first_heartbeat_in(s(3), s(3), i), s(0));
        assert_eq!(first_heartbeat_in(s(4), s(3), i), s(9));
        assert_eq!(first_heartbeat_in(s(127), s(3), i), s(6), "many intervals later");
        assert_eq!(first_heartbeat_in(s(5), s(0), i), s(5));
        assert_eq!(first_heartbeat_in(s(5), s(3), Duration::ZERO), Duration::ZERO);
        for late in 0..50 {
            let wait = first_heartbeat_in(Duration::from_millis(late * 777), Duration::from_millis(1234), i);
            assert!(wait < i);
            assert_eq!((late * 777 + wait.as_millis() as u64) % 10_000, 1234);
        }
    }

    #[test]
    fn enrollment_sources_stay_within_the_per_address_budget() {
        let mut per: HashMap<Ipv4Addr, usize> = HashMap::new();
        for i in 0..20_000 {
            let a = enroll_source(i, 10);
            assert_eq!(a.octets()[..2], [127, 10]);
            assert!((1..=254).contains(&a.octets()[3]), "{a}");
            *per.entry(a).or_default() += 1;
        }
        assert_eq!(per.len(), 2000);
        assert!(per.values().all(|n| *n == 10));
        assert_eq!(enroll_source(0, 10), Ipv4Addr::new(127, 10, 0, 1));
        assert_eq!(enroll_source(2540, 10), Ipv4Addr::new(127, 10, 1, 1));
    }
}
