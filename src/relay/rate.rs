//! The per-organisation search rate limit: a token bucket per ODS code,
//! `rate` tokens a second up to `burst`, one token a search. A search
//! without a token is refused at once (RESOURCE_EXHAUSTED with the time
//! until the next token as RetryInfo) and counted in
//! `cpis_rate_limited_total{organisation}`. One emergency department
//! cannot take search down for the others; a rate of 0 turns it off.
//!
//! Buckets are created on first use: one per organisation with a valid
//! certificate, so their number is bounded by the PKI, not by callers.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use dashmap::DashMap;

/// Searches per second and burst per organisation unless configured.
pub(crate) const DEFAULT_SEARCH_RATE_PER_SECOND: f64 = 50.0;
pub(crate) const DEFAULT_SEARCH_BURST: u32 = 200;

/// The rate limit of one kind of call, per organisation.
pub(crate) struct RateLimiter {
    /// Tokens a second; 0 is no limit.
    rate: f64,
    burst: f64,
    buckets: DashMap<String, Mutex<Bucket>>,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl RateLimiter {
    pub(crate) fn new(rate_per_second: f64, burst: u32) -> Self {
        Self { rate: rate_per_second.max(0.0), burst: f64::from(burst.max(1)), buckets: DashMap::new() }
    }

    /// Takes a token of `organisation`'s bucket, or says how long until one is there.
    pub(crate) fn check(&self, organisation: &str) -> Result<(), Duration> {
        if self.rate == 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let take = |bucket: &Mutex<Bucket>| {
            let mut bucket = bucket.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
            bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
            bucket.updated = now;
            if bucket.tokens >= 1.0 {
                bucket.tokens -= 1.0;
                Ok(())
            } else {
                Err(Duration::from_secs_f64(((1.0 - bucket.tokens) / self.rate).min(86_400.0)))
            }
        };
        if let Some(bucket) = self.buckets.get(organisation) {
            return take(bucket.value());
        }
        let bucket = self
            .buckets
            .entry(organisation.to_owned())
            .or_insert_with(|| Mutex::new(Bucket { tokens: self.burst, updated: now }));
        take(bucket.value())
    }
}

#[cfg(test)]
mod tests {
    use super::RateLimiter;

    #[test]
    fn a_burst_is_allowed_then_refused_with_the_wait_and_organisations_are_separate() {
        let limiter = RateLimiter::new(0.5, 2);
        assert!(limiter.check("RR8").is_ok());
        assert!(limiter.check("RR8").is_ok());
        let wait = limiter.check("RR8").unwrap_err();
        assert!(wait.as_secs_f64() > 1.0 && wait.as_secs_f64() <= 2.0, "{wait:?}");
        assert!(limiter.check("RXH").is_ok());
        let off = RateLimiter::new(0.0, 1);
        assert!((0..1000).all(|_| off.check("RR8").is_ok()));
    }
}
