//! Fixed-window counters per key, in memory (per replica): failed authentications per
//! source address and per token prefix ([`WindowLimiter::record`] after a failure,
//! [`WindowLimiter::blocked`] before trying), and connection tests per principal
//! ([`WindowLimiter::admit`]: count and refuse in one step). A key that reached its limit
//! is refused until its window ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Above this many keys, expired windows are dropped; if that is not enough the oldest half
/// goes (an attacker spraying addresses must not exhaust memory).
const MAX_KEYS: usize = 100_000;

#[derive(Debug)]
pub struct WindowLimiter {
    limit: u32,
    window: Duration,
    counts: Mutex<HashMap<String, (Instant, u32)>>,
    /// When the last window in which some key reached its limit ends, in nanoseconds after
    /// `origin` (0: none yet). Before then a key may be blocked; after it none is, which
    /// [`WindowLimiter::may_block`] answers without the lock.
    blocking_until: AtomicU64,
    origin: Instant,
}

impl WindowLimiter {
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit,
            window,
            counts: Mutex::new(HashMap::new()),
            blocking_until: AtomicU64::new(0),
            origin: Instant::now(),
        }
    }

    /// Whether any key may be blocked now: `false` means [`WindowLimiter::blocked`] is
    /// `None` for every key, so callers need not work out their keys.
    pub fn may_block(&self) -> bool {
        self.nanos(Instant::now()) < self.blocking_until.load(Ordering::Acquire)
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }

    /// `Some(retry_after)` when `key` used up its window.
    pub fn blocked(&self, key: &str) -> Option<Duration> {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let (start, n) = counts.get(key)?;
        let elapsed = start.elapsed();
        (*n >= self.limit && elapsed < self.window).then(|| self.window - elapsed)
    }

    /// Counts one event for `key`.
    pub fn record(&self, key: &str) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let entry = self.window_of(&mut counts, key, Instant::now());
        entry.1 = entry.1.saturating_add(1);
        self.counted(*entry);
    }

    /// Counts one event for `key` unless its window is used up: then nothing is counted
    /// and the answer is how long until the window ends.
    pub fn admit(&self, key: &str) -> Result<(), Duration> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let window = self.window;
        let limit = self.limit;
        let entry = self.window_of(&mut counts, key, now);
        if entry.1 >= limit {
            return Err(window.saturating_sub(now.duration_since(entry.0)));
        }
        entry.1 += 1;
        self.counted(*entry);
        Ok(())
    }

    /// A key's window `(start, count)` after counting: if it reached the limit, keys may be
    /// blocked until that window ends.
    fn counted(&self, (start, n): (Instant, u32)) {
        if n >= self.limit {
            let until = self.nanos(start + self.window);
            self.blocking_until.fetch_max(until, Ordering::AcqRel);
        }
    }

    /// `key`'s current window (a fresh one when it ended), keeping the map bounded.
    fn window_of<'a>(
        &self,
        counts: &'a mut HashMap<String, (Instant, u32)>,
        key: &str,
        now: Instant,
    ) -> &'a mut (Instant, u32) {
        if counts.len() >= MAX_KEYS && !counts.contains_key(key) {
            counts.retain(|_, (start, _)| now.duration_since(*start) < self.window);
            if counts.len() >= MAX_KEYS {
                let mut starts: Vec<Instant> = counts.values().map(|(s, _)| *s).collect();
                starts.sort();
                let cut = starts[starts.len() / 2];
                counts.retain(|_, (start, _)| *start > cut);
            }
        }
        let entry = counts.entry(key.to_owned()).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        entry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_blocked_after_its_limit_until_the_window_ends() {
        let l = WindowLimiter::new(3, Duration::from_millis(200));
        for _ in 0..2 {
            l.record("a");
        }
        assert!(l.blocked("a").is_none());
        assert!(!l.may_block(), "no key reached its limit");
        l.record("a");
        assert!(l.blocked("a").is_some());
        assert!(l.may_block());
        assert!(l.blocked("b").is_none(), "keys are independent");
        std::thread::sleep(Duration::from_millis(220));
        assert!(l.blocked("a").is_none(), "the window ended");
        assert!(!l.may_block(), "the only blocking window ended");
        l.record("a");
        assert!(l.blocked("a").is_none(), "a new window starts at one");
    }

    #[test]
    fn admit_counts_until_the_limit_then_refuses_without_counting() {
        let l = WindowLimiter::new(2, Duration::from_millis(200));
        assert!(l.admit("p").is_ok());
        assert!(l.admit("p").is_ok());
        let wait = l.admit("p").unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(200));
        assert!(l.admit("q").is_ok(), "keys are independent");
        std::thread::sleep(Duration::from_millis(220));
        assert!(l.admit("p").is_ok(), "the window ended");
    }

    #[test]
    fn memory_stays_bounded_under_a_spray_of_keys() {
        let l = WindowLimiter::new(1, Duration::from_secs(60));
        for i in 0..(MAX_KEYS + 10) {
            l.record(&i.to_string());
        }
        assert!(l.counts.lock().unwrap().len() <= MAX_KEYS);
    }
}
