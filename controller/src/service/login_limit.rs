//! Limits on password logins, checked before any password is hashed: a global cap on hashes running at once
//! (argon2 holds about 19 MiB each; beyond the cap a login is refused at once), and two rate limits
//! (`governor`, GCRA): per client address (against one client spraying names) and per user name *and*
//! address (against guessing one account). An attacker exhausts only the budgets keyed by its own address,
//! so an operator who types the right password from elsewhere still logs in; behind a NAT or a load
//! balancer everyone shares one address, and the per-account budget still keeps one attacker from locking
//! out other accounts. On top of the per-account budget, consecutive failures back off exponentially: after
//! [`ACCOUNT_BURST`] failures of one name from one address, each further failure doubles the wait before the
//! next attempt (from [`ACCOUNT_REFILL`] up to [`MAX_BACKOFF`]); a success clears it. Budgets are per replica
//! and forgotten on restart. [`EnrollLimits`] does the same for
//! `Enroll` (which needs no credentials to be called): a budget per client address and a cap on enrollments
//! in progress, checked before the join token is even looked up.

use std::{
    collections::HashMap,
    net::IpAddr,
    num::NonZeroU32,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter, clock::Clock as _};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Password hashes evaluated at once on one replica.
pub const MAX_CONCURRENT_HASHES: usize = 4;
/// Attempts per user name and client address before the budget refills (one per [`ACCOUNT_REFILL`]).
pub const ACCOUNT_BURST: u32 = 5;
/// One more attempt per user name and address after this long.
pub const ACCOUNT_REFILL: Duration = Duration::from_secs(30);
/// The longest wait consecutive failures of one name from one address back off to.
pub const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);
/// Names and addresses whose failures are remembered at most (the oldest lockouts are forgotten first).
const MAX_TRACKED: usize = 10_000;
/// Attempts per client address, whatever the name.
pub const CLIENT_BURST: u32 = 20;
/// One more attempt per address after this long.
pub const CLIENT_REFILL: Duration = Duration::from_secs(3);

/// Why a login is refused before its password is looked at.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A budget is spent: retry after this long.
    RetryIn(Duration),
    /// Too many logins are being evaluated right now.
    Busy,
}

/// The limits (cheap to clone).
#[derive(Clone)]
pub struct LoginLimits {
    hashing: Arc<Semaphore>,
    per_client: Arc<DefaultKeyedRateLimiter<IpAddr>>,
    per_account: Arc<DefaultKeyedRateLimiter<(String, IpAddr)>>,
    backoff: Arc<Backoff>,
}

/// Consecutive failures per (name, address) and the time before which the next attempt is refused.
struct Backoff {
    free: u32,
    base: Duration,
    strikes: Mutex<HashMap<(String, IpAddr), (u32, Instant)>>,
}

impl Backoff {
    fn wait(&self, key: &(String, IpAddr), now: Instant) -> Option<Duration> {
        let strikes = self.strikes.lock().ok()?;
        strikes.get(key).and_then(|(_, until)| until.checked_duration_since(now)).filter(|d| !d.is_zero())
    }

    fn failed(&self, key: (String, IpAddr), now: Instant) {
        let Ok(mut strikes) = self.strikes.lock() else { return };
        if strikes.len() >= MAX_TRACKED && !strikes.contains_key(&key) {
            strikes.retain(|_, (_, until)| *until > now);
            if strikes.len() >= MAX_TRACKED {
                return;
            }
        }
        let (count, until) = strikes.entry(key).or_insert((0, now));
        *count += 1;
        if *count > self.free {
            let doublings = (*count - self.free - 1).min(16);
            *until = now + (self.base * 2u32.pow(doublings)).min(MAX_BACKOFF);
        }
    }

    fn succeeded(&self, key: &(String, IpAddr)) {
        if let Ok(mut strikes) = self.strikes.lock() {
            strikes.remove(key);
        }
    }
}

impl std::fmt::Debug for LoginLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginLimits").field("hashing_free", &self.hashing.available_permits()).finish()
    }
}

impl Default for LoginLimits {
    fn default() -> Self {
        Self::new(MAX_CONCURRENT_HASHES, (ACCOUNT_BURST, ACCOUNT_REFILL), (CLIENT_BURST, CLIENT_REFILL))
    }
}

fn quota((burst, refill): (u32, Duration)) -> Quota {
    let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(refill.max(Duration::from_millis(1)))
        .unwrap_or_else(|| Quota::per_second(burst))
        .allow_burst(burst)
}

impl LoginLimits {
    /// Limits with `hashes` concurrent evaluations and (burst, refill) budgets per account and per client.
    pub fn new(hashes: usize, account: (u32, Duration), client: (u32, Duration)) -> Self {
        Self {
            hashing: Arc::new(Semaphore::new(hashes.max(1))),
            per_client: Arc::new(RateLimiter::keyed(quota(client))),
            per_account: Arc::new(RateLimiter::keyed(quota(account))),
            backoff: Arc::new(Backoff { free: account.0, base: account.1, strikes: Mutex::default() }),
        }
    }

    fn key(username: &str, client: Option<IpAddr>) -> (String, IpAddr) {
        // An attempt without a peer address (not over TCP) shares one budget.
        (username.chars().take(64).collect(), client.unwrap_or(IpAddr::from([0, 0, 0, 0])))
    }

    /// Records a failed login of `username` from `client` (it backs off once the budget's worth failed).
    pub fn failed(&self, username: &str, client: Option<IpAddr>) {
        self.backoff.failed(Self::key(username, client), Instant::now());
    }

    /// Records a successful login: its failures are forgotten.
    pub fn succeeded(&self, username: &str, client: Option<IpAddr>) {
        self.backoff.succeeded(&Self::key(username, client));
    }

    /// Counts one attempt of `username` from `client` and reserves a hashing slot; the permit is held while
    /// the password is verified. Refused attempts cost nothing more than this call.
    pub fn admit(&self, username: &str, client: Option<IpAddr>) -> Result<OwnedSemaphorePermit, Refusal> {
        let key = Self::key(username, client);
        let ip = key.1;
        if let Some(wait) = self.backoff.wait(&key, Instant::now()) {
            return Err(Refusal::RetryIn(wait));
        }
        let now = governor::clock::DefaultClock::default().now();
        self.per_account.check_key(&key).map_err(|n| Refusal::RetryIn(n.wait_time_from(now)))?;
        self.per_client.check_key(&ip).map_err(|n| Refusal::RetryIn(n.wait_time_from(now)))?;
        let permit = self.hashing.clone().try_acquire_owned().map_err(|_| Refusal::Busy)?;
        // Keys of budgets that are full again are dropped now and then, so memory stays bounded.
        if self.per_account.len() > 10_000 {
            self.per_account.retain_recent();
            self.per_client.retain_recent();
        }
        Ok(permit)
    }
}

/// Enrollments allowed per client address before the budget refills (one per [`ENROLL_REFILL`]).
pub const ENROLL_BURST: u32 = 10;
/// One more enrollment per address after this long.
pub const ENROLL_REFILL: Duration = Duration::from_secs(2);
/// Enrollments in progress at once on one replica (each holds a database connection briefly).
pub const MAX_CONCURRENT_ENROLLMENTS: usize = 4;

/// The limits of `Enroll` (cheap to clone).
#[derive(Clone)]
pub struct EnrollLimits {
    in_progress: Arc<Semaphore>,
    per_client: Arc<DefaultKeyedRateLimiter<IpAddr>>,
}

impl std::fmt::Debug for EnrollLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollLimits").field("free", &self.in_progress.available_permits()).finish()
    }
}

impl Default for EnrollLimits {
    fn default() -> Self {
        Self {
            in_progress: Arc::new(Semaphore::new(MAX_CONCURRENT_ENROLLMENTS)),
            per_client: Arc::new(RateLimiter::keyed(quota((ENROLL_BURST, ENROLL_REFILL)))),
        }
    }
}

impl EnrollLimits {
    /// Counts one enrollment from `client` and reserves a slot, held until the enrollment is done.
    pub fn admit(&self, client: Option<IpAddr>) -> Result<OwnedSemaphorePermit, Refusal> {
        let ip = client.unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let now = governor::clock::DefaultClock::default().now();
        self.per_client.check_key(&ip).map_err(|n| Refusal::RetryIn(n.wait_time_from(now)))?;
        if self.per_client.len() > 10_000 {
            self.per_client.retain_recent();
        }
        self.in_progress.clone().try_acquire_owned().map_err(|_| Refusal::Busy)
    }
}

impl Refusal {
    /// As the controller's error: `RESOURCE_EXHAUSTED` saying when to retry.
    pub fn into_error(self, what: &str) -> crate::error::ControllerError {
        crate::error::ControllerError::ResourceExhausted(match self {
            Refusal::RetryIn(d) => format!("too many {what} attempts; retry in {} s", d.as_secs().max(1)),
            Refusal::Busy => format!("too many {what} attempts in progress; retry in a second"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_budget_is_per_address_and_hashing_is_capped() {
        let l = LoginLimits::new(2, (3, Duration::from_secs(60)), (100, Duration::from_secs(1)));
        let (a, b) = (Some(IpAddr::from([10, 0, 0, 1])), Some(IpAddr::from([10, 0, 0, 2])));
        for _ in 0..3 {
            drop(l.admit("admin", a).expect("within the budget"));
        }
        assert!(matches!(l.admit("admin", a), Err(Refusal::RetryIn(d)) if d > Duration::from_secs(50)));
        // The same name from elsewhere, and another name from the same address, still get in.
        let p1 = l.admit("admin", b).expect("another address");
        let p2 = l.admit("ops", a).expect("another name");
        // Two hashes run: a third is refused at once.
        assert_eq!(l.admit("third", b).err(), Some(Refusal::Busy));
        drop((p1, p2));
        assert!(l.admit("third", b).is_ok());
    }

    #[test]
    fn consecutive_failures_back_off_exponentially_and_a_success_clears_them() {
        let base = Duration::from_millis(200);
        // A generous governor budget, so only the backoff refuses.
        let l = LoginLimits::new(8, (3, base), (1000, Duration::from_millis(1)));
        let b = &l.backoff;
        let (a, other) = (Some(IpAddr::from([10, 0, 0, 1])), Some(IpAddr::from([10, 0, 0, 2])));
        let key = LoginLimits::key("admin", a);
        let t0 = Instant::now();
        for _ in 0..3 {
            b.failed(key.clone(), t0);
            assert_eq!(b.wait(&key, t0), None, "the first failures are free");
        }
        // Then each failure doubles the wait: 200 ms, 400 ms, 800 ms…
        for (n, expected) in [(4, 200), (5, 400), (6, 800), (7, 1600)] {
            b.failed(key.clone(), t0);
            assert_eq!(b.wait(&key, t0), Some(Duration::from_millis(expected)), "failure {n}");
        }
        assert!(matches!(l.admit("admin", a), Err(Refusal::RetryIn(d)) if d > Duration::from_millis(1000)));
        assert!(l.admit("admin", other).is_ok(), "the same name from elsewhere is not held back");
        // Capped, and a success forgets it all.
        for _ in 0..40 {
            b.failed(key.clone(), t0);
        }
        assert_eq!(b.wait(&key, t0), Some(MAX_BACKOFF));
        l.succeeded("admin", a);
        assert_eq!(b.wait(&key, t0), None);
    }

    #[test]
    fn a_client_spraying_names_runs_out_of_its_own_budget() {
        let l = LoginLimits::new(8, (5, Duration::from_secs(60)), (4, Duration::from_secs(60)));
        let c = Some(IpAddr::from([10, 0, 0, 9]));
        for i in 0..4 {
            drop(l.admit(&format!("user{i}"), c).expect("within the client budget"));
        }
        assert!(matches!(l.admit("user9", c), Err(Refusal::RetryIn(_))));
        assert!(l.admit("user9", Some(IpAddr::from([10, 0, 0, 10]))).is_ok());
    }
}
