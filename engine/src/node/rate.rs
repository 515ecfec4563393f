//! The publish rate limit: a token bucket per connection, refilled from the `now`
//! the node is given (no clock of its own).

use std::time::Instant;

/// Nanoseconds in a second: one token is worth this many credit units, and every
/// nanosecond adds `per_second` units, so the refill is exact integer arithmetic.
const NANOS: u128 = 1_000_000_000;

/// A publish rate limit: at most `per_second` publications and user messages per
/// second on one connection on average, with bursts of up to `burst` at once.
///
/// Both must be at least 1 ([`RateLimit::new`] checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    per_second: u32,
    burst: u32,
}

/// A [`RateLimit`] with a zero rate or burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a publish rate limit needs a rate and a burst of at least 1 (got {per_second}/s, burst {burst})")]
pub struct RateLimitError {
    /// The rate asked for.
    pub per_second: u32,
    /// The burst asked for.
    pub burst: u32,
}

impl RateLimit {
    /// `per_second` commands per second, bursts of up to `burst`; both ≥ 1.
    pub fn new(per_second: u32, burst: u32) -> Result<Self, RateLimitError> {
        if per_second == 0 || burst == 0 {
            return Err(RateLimitError { per_second, burst });
        }
        Ok(Self { per_second, burst })
    }

    /// `per_second` with a burst of as many (one second's worth): what
    /// `pushwire serve --publish-rate N` uses without `--publish-burst`.
    pub fn per_second(per_second: u32) -> Result<Self, RateLimitError> {
        Self::new(per_second, per_second)
    }

    /// The average rate, in commands per second.
    pub fn rate(&self) -> u32 {
        self.per_second
    }

    /// The largest burst.
    pub fn burst(&self) -> u32 {
        self.burst
    }
}

/// One connection's bucket: starts full (`burst` tokens), gains `per_second` tokens a
/// second up to `burst`, and each counted command takes one.
///
/// # Calling contract
///
/// Pass a `now` that never goes backwards (an earlier one refills nothing).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    limit: RateLimit,
    /// Credit, in units of 1/[`NANOS`] token: at most `burst * NANOS`.
    credit: u128,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(limit: RateLimit, now: Instant) -> Self {
        Self {
            limit,
            credit: u128::from(limit.burst) * NANOS,
            last: now,
        }
    }

    /// Takes a token at `now` if there is one: `true` lets the command through.
    pub fn try_take(&mut self, now: Instant) -> bool {
        if let Some(elapsed) = now.checked_duration_since(self.last) {
            let full = u128::from(self.limit.burst) * NANOS;
            let gained = elapsed
                .as_nanos()
                .saturating_mul(self.limit.per_second.into());
            self.credit = self.credit.saturating_add(gained).min(full);
            self.last = now;
        }
        if self.credit >= NANOS {
            self.credit -= NANOS;
            true
        } else {
            false
        }
    }

    /// The limit it applies.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Whole tokens left (as of the last [`try_take`](Self::try_take)).
    pub fn tokens(&self) -> u32 {
        (self.credit / NANOS) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    #[test]
    fn zero_rate_or_burst_is_refused() {
        assert!(RateLimit::new(0, 1).is_err());
        assert!(RateLimit::new(1, 0).is_err());
        assert_eq!(RateLimit::per_second(5).unwrap().burst(), 5);
    }

    #[test]
    fn a_burst_passes_then_the_bucket_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(RateLimit::new(10, 3).unwrap(), t0);
        assert!((0..3).all(|_| bucket.try_take(t0)));
        assert!(!bucket.try_take(t0));
        // 99 ms at 10/s: not yet a token; 100 ms: one.
        assert!(!bucket.try_take(t0 + Duration::from_millis(99)));
        assert!(bucket.try_take(t0 + Duration::from_millis(100)));
        assert!(!bucket.try_take(t0 + Duration::from_millis(100)));
        // A long pause refills up to the burst, no more.
        let later = t0 + Duration::from_secs(3600);
        assert!((0..3).all(|_| bucket.try_take(later)));
        assert!(!bucket.try_take(later));
    }

    proptest! {
        /// Against the definition: in any window [a, b] the accepted commands are at
        /// most burst + rate·(b − a); a stream spaced at the rate is never refused;
        /// and a refusal only happens when the model (tokens recomputed from the
        /// whole history in floating point) has under one token.
        #[test]
        fn the_bucket_matches_its_model(
            rate in 1u32..50,
            burst in 1u32..8,
            gaps in proptest::collection::vec(0u64..200, 1..200),
        ) {
            let t0 = Instant::now();
            let limit = RateLimit::new(rate, burst).unwrap();
            let mut bucket = TokenBucket::new(limit, t0);
            let mut model = f64::from(burst);
            let mut t = 0u64; // milliseconds
            let mut last = 0u64;
            let mut accepted = Vec::new();
            for gap in gaps {
                t += gap;
                model = (model + (t - last) as f64 * f64::from(rate) / 1000.0).min(f64::from(burst));
                last = t;
                let ok = bucket.try_take(t0 + Duration::from_millis(t));
                if (model - 1.0).abs() > 1e-6 {
                    prop_assert_eq!(ok, model >= 1.0, "t={} model={}", t, model);
                }
                if ok {
                    model -= 1.0;
                    accepted.push(t);
                }
            }
            for (i, a) in accepted.iter().enumerate() {
                for (j, b) in accepted.iter().enumerate().skip(i) {
                    let count = (j - i + 1) as f64;
                    let allowed = f64::from(burst) + (b - a) as f64 * f64::from(rate) / 1000.0;
                    prop_assert!(count <= allowed + 1e-9, "{} in [{}, {}]", count, a, b);
                }
            }
            // Spaced at the rate after a pause: never refused.
            let interval = 1000u64.div_ceil(u64::from(rate));
            let start = t + 1000 * u64::from(burst);
            for k in 0..20 {
                prop_assert!(bucket.try_take(t0 + Duration::from_millis(start + k * interval)));
            }
        }
    }
}
