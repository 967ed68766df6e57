//! Window clock: drains happen on absolute monotonic deadlines
//! (start + k × interval), so windows do not drift however long a drain takes.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Absolute deadlines for window boundaries.
#[derive(Debug, Clone)]
pub struct WindowClock {
    start: Instant,
    interval: Duration,
    /// Index of the next boundary (boundary k is at start + k × interval).
    next: u64,
}

impl WindowClock {
    pub fn new(interval: Duration) -> Self {
        Self::starting_at(Instant::now(), interval)
    }

    /// A clock whose first window began at `start`.
    pub fn starting_at(start: Instant, interval: Duration) -> Self {
        Self {
            start,
            interval,
            next: 1,
        }
    }

    /// When the current window closes.
    pub fn deadline(&self) -> Instant {
        // Intervals are at most MAX_INTERVAL (parse_interval), so this cannot
        // overflow before the heat death of the host.
        let nanos = self.interval.as_nanos() * u128::from(self.next);
        self.start
            + Duration::new(
                (nanos / 1_000_000_000) as u64,
                (nanos % 1_000_000_000) as u32,
            )
    }

    /// Moves to the next window. Returns how many boundaries were missed
    /// (the drain ran late past them), which are merged into this window.
    pub fn advance(&mut self, now: Instant) -> u32 {
        let elapsed = now.saturating_duration_since(self.start);
        let due = u64::try_from(elapsed.as_nanos() / self.interval.as_nanos().max(1))
            .unwrap_or(u64::MAX - 1);
        let missed = due.saturating_sub(self.next);
        self.next = due.max(self.next) + 1;
        u32::try_from(missed).unwrap_or(u32::MAX)
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Shortest window: below it a drain per window costs more than the window.
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);
/// Longest window.
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);

/// Parses a window length (`--interval`): a duration from [`MIN_INTERVAL`]
/// to [`MAX_INTERVAL`].
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < MIN_INTERVAL || d > MAX_INTERVAL {
        return Err(format!(
            "`{}` is outside the window lengths vmwatch supports (10ms to 1h)",
            s.trim()
        ));
    }
    Ok(d)
}

/// Parses durations like `2s`, `500ms`, `1.5s`, `1m`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let value: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (try 2s or 500ms)"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" | "min" => value * 60.0,
        _ => return Err(format!("`{s}` has an unknown unit (use ms, s or m)")),
    };
    if !(secs.is_finite() && secs > 0.0) {
        return Err(format!("`{s}` must be a positive duration"));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| format!("`{s}` is too long a duration"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_are_absolute() {
        let mut c = WindowClock::new(Duration::from_secs(2));
        let t0 = c.start;
        assert_eq!(c.deadline(), t0 + Duration::from_secs(2));
        // A drain 300 ms late does not push later deadlines.
        assert_eq!(c.advance(t0 + Duration::from_millis(2300)), 0);
        assert_eq!(c.deadline(), t0 + Duration::from_secs(4));
        // A drain that overran two boundaries reports them and realigns.
        assert_eq!(c.advance(t0 + Duration::from_millis(8100)), 2);
        assert_eq!(c.deadline(), t0 + Duration::from_secs(10));
    }

    #[test]
    fn no_drift_over_an_hour_of_windows() {
        let mut c = WindowClock::new(Duration::from_secs(2));
        let t0 = c.start;
        for k in 1..=1800u32 {
            // Every drain is 7 ms late.
            c.advance(t0 + Duration::from_secs(2) * k + Duration::from_millis(7));
        }
        assert_eq!(c.deadline(), t0 + Duration::from_secs(3602));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("2h").is_err());
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("100000000000000000000s").is_err());
    }

    #[test]
    fn intervals_have_a_floor_and_a_ceiling() {
        assert_eq!(parse_interval("10ms").unwrap(), MIN_INTERVAL);
        assert_eq!(parse_interval("60m").unwrap(), MAX_INTERVAL);
        for bad in ["0.000000000001s", "9ms", "61m", "10000000000000000000s"] {
            let err = parse_interval(bad).unwrap_err();
            assert!(
                err.contains("10ms to 1h") || err.contains("too long"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn the_longest_interval_does_not_overflow() {
        let mut c = WindowClock::new(MAX_INTERVAL);
        let t0 = c.start;
        c.next = u64::from(u32::MAX) * 4;
        assert!(c.deadline() > t0);
        assert_eq!(c.advance(t0 + Duration::from_secs(7200)), 0);
    }
}
