//! The read-rate limit of a verify (scrubbing must not saturate a storage): one [`ReadLimiter`] per verify,
//! shared by every copy it reads, built on `governor`'s GCRA limiter. Bytes are taken before they are
//! hashed, in pieces no larger than the limiter's burst (a tenth of a second's worth, at most 1 MiB), so the
//! rate holds over any window longer than that and a read never waits for more than the burst at once.

use std::num::NonZeroU32;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// Largest burst (bytes) the limiter lets through at once.
const MAX_BURST: u32 = 1 << 20;

/// A shared byte-rate limit; unlimited when built from 0.
#[derive(Debug)]
pub struct ReadLimiter {
    inner: Option<(DefaultDirectRateLimiter, NonZeroU32)>,
}

impl ReadLimiter {
    /// At most `bytes_per_second` (0: unlimited; capped at `u32::MAX`, about 4 GiB/s).
    pub fn new(bytes_per_second: u64) -> Self {
        let rate = u32::try_from(bytes_per_second).unwrap_or(u32::MAX);
        let inner = NonZeroU32::new(rate).map(|per_second| {
            let burst = NonZeroU32::new((rate / 10).clamp(1, MAX_BURST)).unwrap_or(NonZeroU32::MIN);
            (RateLimiter::direct(Quota::per_second(per_second).allow_burst(burst)), burst)
        });
        Self { inner }
    }

    /// Waits until `bytes` more may be read.
    pub async fn take(&self, bytes: usize) {
        let Some((limiter, burst)) = &self.inner else { return };
        let mut left = u64::try_from(bytes).unwrap_or(u64::MAX);
        while left > 0 {
            let piece = left.min(u64::from(burst.get()));
            left -= piece;
            let n = NonZeroU32::new(u32::try_from(piece).unwrap_or(burst.get())).unwrap_or(NonZeroU32::MIN);
            // `piece` never exceeds the burst, so the limiter can always grant it.
            let _ = limiter.until_n_ready(n).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[tokio::test]
    async fn the_limit_holds_across_takes_and_zero_is_unlimited() {
        let free = ReadLimiter::new(0);
        let t = Instant::now();
        free.take(1 << 30).await;
        assert!(t.elapsed() < Duration::from_millis(50), "unlimited does not wait");

        // 100 KiB/s with a 10 KiB burst: 60 KiB in pieces of varied size take at least ~0.5 s.
        let l = ReadLimiter::new(100 * 1024);
        let t = Instant::now();
        for n in [1, 30 * 1024, 7, 20 * 1024, 10 * 1024 - 8] {
            l.take(n).await;
        }
        assert!(t.elapsed() >= Duration::from_millis(450), "{:?}", t.elapsed());
    }
}
