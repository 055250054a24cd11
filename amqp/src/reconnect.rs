//! The reconnect loop: connect, run a session until it ends, back off, connect again.

use lapin::Connection;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{BACKOFF_MAX, BACKOFF_MIN, End, next_backoff, timed};

/// Connects (with `connect`, backing off from 100 ms to 5 s by doubling, for as long as it
/// takes) and runs `session` on each connection, until `shutdown` fires or a session ends with
/// [`End::Shutdown`]. A session that stayed up a while starts the backoff afresh; one that fails
/// at once (a refused declare, say) keeps doubling it.
pub async fn run_sessions<C, S>(
    shutdown: &CancellationToken,
    mut connect: impl FnMut() -> C,
    mut session: impl FnMut(Connection) -> S,
) where
    C: Future<Output = Result<Connection, lapin::Error>>,
    S: Future<Output = End>,
{
    let mut delay = BACKOFF_MIN;
    let mut sessions = 0u64;
    while !shutdown.is_cancelled() {
        let connected = tokio::select! {
            _ = shutdown.cancelled() => break,
            c = timed("connecting", connect()) => c,
        };
        match connected {
            Err(e) => warn!(error = %e, retry_in = ?delay, "cannot connect to RabbitMQ"),
            Ok(conn) => {
                sessions += 1;
                if sessions == 1 {
                    info!("connected to RabbitMQ");
                } else {
                    info!(session = sessions, "reconnected to RabbitMQ");
                }
                let since = Instant::now();
                match session(conn).await {
                    End::Shutdown => break,
                    End::Lost(reason) => {
                        warn!(%reason, "lost the RabbitMQ connection; reconnecting");
                    }
                }
                if since.elapsed() >= BACKOFF_MAX {
                    delay = BACKOFF_MIN;
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = next_backoff(delay);
    }
}
