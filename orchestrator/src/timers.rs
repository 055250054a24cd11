//! The timer scanner: fires due timers (any process may; `FOR UPDATE SKIP LOCKED` shares them),
//! sleeping until the next one is due or the engine armed a new one — not on a fixed tick.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::engine::Engine;
use crate::store;

/// Timers taken per transaction.
const BATCH: i64 = 128;
/// The longest sleep: timers armed by other processes are seen at least this often.
const MAX_SLEEP: Duration = Duration::from_secs(1);

pub async fn run(engine: Engine, shutdown: CancellationToken) {
    let mut failures = 0u32;
    while !shutdown.is_cancelled() {
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
            _ = engine.timers_wake().notified() => {}
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}

/// Fires what is due; returns how long to sleep before looking again.
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
    let next = store::timers::next_due_in(&mut conn).await?;
    Ok(next.map_or(MAX_SLEEP, |d| d.min(MAX_SLEEP)))
}
