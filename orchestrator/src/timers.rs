//! The timer scanner: fires due timers (any process may; `FOR UPDATE SKIP LOCKED` shares them),
//! sleeping until the next one is due or this process armed one that is due sooner — not on a
//! fixed tick.

use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::engine::Engine;
use crate::store;

/// Timers taken per transaction.
const BATCH: i64 = 128;
/// The longest sleep: timers armed by other processes are seen at least this often.
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// Wakes the scanner when a timer is armed that is due before the scanner's next look. Most
/// timers (an attempt's, a saga's deadline) are due long after it, and waking the scanner for
/// each of them cost two statements per step.
#[derive(Debug, Default)]
pub struct TimerWake {
    notify: Notify,
    /// When the scanner looks next, by the database's clock; None while it is looking.
    next_look: Mutex<Option<DateTime<Utc>>>,
}

impl TimerWake {
    /// A timer due at `at` (by the database's clock) was committed.
    pub fn armed(&self, at: DateTime<Utc>) {
        let next_look = *self.next_look.lock().unwrap_or_else(|e| e.into_inner());
        if next_look.is_none_or(|next| at < next) {
            self.notify.notify_one();
        }
    }

    fn looking(&self) {
        *self.next_look.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn sleeping_until(&self, at: DateTime<Utc>) {
        *self.next_look.lock().unwrap_or_else(|e| e.into_inner()) = Some(at);
    }
}

pub async fn run(engine: Engine, shutdown: CancellationToken) {
    let mut failures = 0u32;
    let wake = engine.timers_wake();
    while !shutdown.is_cancelled() {
        // A timer armed from now on wakes the next sleep at once (it may be missed by this look).
        wake.looking();
        let sleep = match tick(&engine).await {
            Ok(sleep) => {
                failures = 0;
                sleep
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let backoff = Duration::from_millis(100 * 2u64.pow(failures.min(6)));
                tracing::warn!(error = %e, retry_in = ?backoff, "timer scan failed");
                backoff
            }
        };
        if sleep.is_zero() {
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = wake.notify.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}

/// Fires what is due; returns how long to sleep before looking again (and tells the engine's
/// [`TimerWake`] when that is).
async fn tick(engine: &Engine) -> Result<Duration, crate::engine::EngineError> {
    let fired = engine.fire_due_timers(BATCH).await?;
    if fired as i64 >= BATCH {
        return Ok(Duration::ZERO);
    }
    let mut conn = engine
        .pool()
        .acquire()
        .await
        .map_err(store::StoreError::from)?;
    let (now, next) = store::timers::next_due(&mut conn).await?;
    let sleep = next
        .and_then(|at| (at - now).to_std().ok())
        .map_or(MAX_SLEEP, |d| d.min(MAX_SLEEP));
    if let Ok(ahead) = chrono::Duration::from_std(sleep) {
        engine.timers_wake().sleeping_until(now + ahead);
    }
    Ok(sleep)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    async fn woken(wake: &TimerWake) -> bool {
        tokio::time::timeout(Duration::from_millis(20), wake.notify.notified())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn only_a_timer_due_before_the_next_look_wakes_the_scanner() {
        let t = |s: i64| {
            Utc.timestamp_opt(1_800_000_000 + s, 0)
                .single()
                .expect("a time")
        };
        let wake = TimerWake::default();
        wake.sleeping_until(t(10));
        wake.armed(t(40));
        assert!(!woken(&wake).await, "due after the next look: no wake-up");
        wake.armed(t(5));
        assert!(woken(&wake).await, "due before it: woken");
        // While the scanner looks, anything armed may be missed by that look: woken.
        wake.looking();
        wake.armed(t(400));
        assert!(woken(&wake).await);
    }
}
