//! Waits between retries, for every client that retries (the sql sink, the
//! HubSpot client, the Kaggle source): an exponential cap, then jitter so
//! that many clients failing together do not retry together.

use std::time::Duration;

use rand::Rng;

/// `base × 2^attempt`, doubling at most `max_doublings` times.
pub fn cap(base: Duration, attempt: u32, max_doublings: u32) -> Duration {
    base.saturating_mul(1 << attempt.min(max_doublings))
}

/// Anywhere from nothing to `cap` ("full jitter").
pub fn full_jitter(cap: Duration) -> Duration {
    Duration::from_millis(rand::rng().random_range(0..=cap.as_millis() as u64))
}

/// Between half of `cap` and `cap` ("equal jitter"): never retries at once.
pub fn equal_jitter(cap: Duration) -> Duration {
    let ms = cap.as_millis() as u64;
    Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_double_up_to_the_limit_and_jitter_stays_inside() {
        let base = Duration::from_millis(100);
        assert_eq!(cap(base, 1, 7), Duration::from_millis(200));
        assert_eq!(cap(base, 30, 7), Duration::from_millis(12_800));
        for _ in 0..100 {
            assert!(full_jitter(Duration::from_millis(50)) <= Duration::from_millis(50));
            let e = equal_jitter(Duration::from_millis(50));
            assert!(e >= Duration::from_millis(25) && e <= Duration::from_millis(50));
        }
    }
}
