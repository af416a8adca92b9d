//! When a failed job runs again: a pure function of the policy, the attempt and a random draw,
//! so that it is tested without a clock or a random source.

use std::time::Duration;

/// Per job kind: how often to try, and how long to wait between tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; after the last the job is dead-lettered.
    pub max_attempts: i32,
    /// The wait after the first failure; it doubles with each further failure.
    pub base: Duration,
    /// The longest wait.
    pub cap: Duration,
}

impl Default for RetryPolicy {
    /// 20 attempts, 1 s doubling to at most 1 h: about 14 hours of retries, enough to ride out a
    /// provider's outage of most of a day.
    fn default() -> Self {
        RetryPolicy { max_attempts: 20, base: Duration::from_secs(1), cap: Duration::from_secs(3600) }
    }
}

impl RetryPolicy {
    /// The wait before the next attempt after `failed` failures (1 for the first), with
    /// `jitter` drawn uniformly from [0, 1): the nominal wait base·2^(failed−1), capped, is
    /// spread over [wait/2, wait] so that jobs failing together do not retry together.
    pub fn delay(&self, failed: i32, jitter: f64) -> Duration {
        let exponent = failed.saturating_sub(1).clamp(0, 30) as u32;
        let nominal = self.base.saturating_mul(1u32 << exponent).min(self.cap);
        nominal.div_f64(2.0).mul_f64(1.0 + jitter.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: RetryPolicy = RetryPolicy { max_attempts: 5, base: Duration::from_secs(2), cap: Duration::from_secs(60) };

    #[test]
    fn delays_double_and_stop_at_the_cap() {
        let full: Vec<u64> = (1..=7).map(|n| POLICY.delay(n, 1.0).as_secs()).collect();
        assert_eq!(full, vec![2, 4, 8, 16, 32, 60, 60]);
        let least: Vec<u64> = (1..=7).map(|n| POLICY.delay(n, 0.0).as_secs()).collect();
        assert_eq!(least, vec![1, 2, 4, 8, 16, 30, 30]);
    }

    #[test]
    fn jitter_spreads_between_half_and_all_of_the_wait() {
        assert_eq!(POLICY.delay(3, 0.5), Duration::from_secs(6));
        assert_eq!(POLICY.delay(3, 7.0), POLICY.delay(3, 1.0), "out-of-range draws are clamped");
    }

    #[test]
    fn huge_attempt_numbers_do_not_overflow() {
        assert_eq!(POLICY.delay(i32::MAX, 1.0), Duration::from_secs(60));
        assert_eq!(POLICY.delay(0, 1.0), Duration::from_secs(2));
    }
}
