//! The backoff between reconnects and between retries of anything that waits for a server.

use std::time::Duration;

/// The first delay.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The longest delay; also how long a session must have stayed up for the next reconnect to
/// start the backoff afresh.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The next delay of a 100 ms → 5 s doubling backoff.
pub fn next_backoff(delay: Duration) -> Duration {
    (delay * 2).min(BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_seconds() {
        let mut d = BACKOFF_MIN;
        let mut seen = vec![d];
        for _ in 0..8 {
            d = next_backoff(d);
            seen.push(d);
        }
        assert_eq!(seen[1], Duration::from_millis(200));
        assert_eq!(seen[5], Duration::from_millis(3200));
        assert_eq!(seen[6], BACKOFF_MAX);
        assert_eq!(seen[8], BACKOFF_MAX);
    }

    #[test]
    fn backoff_never_exceeds_the_maximum() {
        assert_eq!(next_backoff(BACKOFF_MAX), BACKOFF_MAX);
        assert_eq!(next_backoff(Duration::from_secs(3600)), BACKOFF_MAX);
        assert_eq!(next_backoff(Duration::ZERO), Duration::ZERO);
    }
}
