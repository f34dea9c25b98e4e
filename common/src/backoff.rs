//! Reconnect backoff: exponential with full jitter, capped, never giving up. Used by the agent after any
//! disconnect so that a fleet of agents does not reconnect in lockstep after a controller restart.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// An endless iterator of jittered delays between `min` and `max`.
pub fn reconnect_delays(min: Duration, max: Duration) -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_bounded() {
        let delays: Vec<_> = reconnect_delays(Duration::from_millis(100), Duration::from_secs(5)).take(50).collect();
        assert_eq!(delays.len(), 50, "never gives up");
        // Jitter adds at most the delay itself on top of the capped delay.
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(10)), "{delays:?}");
        assert!(delays.iter().all(|d| *d >= Duration::from_millis(100)), "{delays:?}");
        assert!(delays[20] >= Duration::from_secs(5), "grows to the cap: {delays:?}");
    }
}
