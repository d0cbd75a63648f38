//! The wake-up loop the status controllers share (SecurityPolicy status in [`crate::policy`], the NodeImage KSPP
//! summary in [`crate::hardening`]): their watches feed reflector stores and wake one pass on every event; the pass
//! runs a debounce after the first wake-up (events in between fold into it), and at least every `resync`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt};
use kube::runtime::watcher;
use tokio::sync::Notify;
use tracing::warn;

/// Drives a reflector's stream, waking the pass on every event; a watch error is logged (the watcher backs off and
/// retries).
pub async fn notify_each<T>(
    stream: impl Stream<Item = Result<T, watcher::Error>>,
    changed: Arc<Notify>,
    what: &'static str,
) {
    stream
        .for_each(|r| {
            match r {
                Ok(_) => changed.notify_one(),
                Err(e) => warn!(error = %e, "{what} watch"),
            }
            std::future::ready(())
        })
        .await;
}

/// When a status controller runs its next pass: `debounce` after a wake-up on `changed` (wake-ups in between fold
/// into it), and at least every `resync`, until `shutdown` completes.
pub struct Passes<S> {
    changed: Arc<Notify>,
    debounce: Duration,
    resync: Duration,
    shutdown: Pin<Box<S>>,
}

impl<S> std::fmt::Debug for Passes<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passes")
            .field("debounce", &self.debounce)
            .field("resync", &self.resync)
            .finish_non_exhaustive()
    }
}

impl<S: Future<Output = ()>> Passes<S> {
    /// The schedule; nothing waits until [`Passes::next`].
    pub fn new(changed: Arc<Notify>, debounce: Duration, resync: Duration, shutdown: S) -> Self {
        Passes {
            changed,
            debounce,
            resync,
            shutdown: Box::pin(shutdown),
        }
    }

    /// Waits until the next pass is due: `true`, or `false` once `shutdown` has completed.
    pub async fn next(&mut self) -> bool {
        tokio::select! {
            () = self.changed.notified() => {}
            () = tokio::time::sleep(self.resync) => {}
            () = &mut self.shutdown => return false,
        }
        tokio::select! {
            () = tokio::time::sleep(self.debounce) => {}
            () = &mut self.shutdown => return false,
        }
        // Wake-ups during the debounce are folded into this pass (the stores already hold their changes); only
        // those from now on ask for another one.
        let _ = self.changed.notified().now_or_never();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A burst of wake-ups inside the debounce is one pass; with no wake-up, `resync` still runs one; shutdown
    /// stops the loop even mid-debounce.
    #[tokio::test(start_paused = true)]
    async fn debounces_resyncs_and_stops() {
        let changed = Arc::new(Notify::new());
        let passes = Arc::new(AtomicUsize::new(0));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = {
            let (changed, passes) = (changed.clone(), passes.clone());
            tokio::spawn(async move {
                let shutdown = async move {
                    let _ = stop_rx.await;
                };
                let mut p = Passes::new(
                    changed,
                    Duration::from_millis(300),
                    Duration::from_secs(60),
                    shutdown,
                );
                while p.next().await {
                    passes.fetch_add(1, Ordering::SeqCst);
                }
            })
        };
        for _ in 0..5 {
            changed.notify_one();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(passes.load(Ordering::SeqCst), 1, "one pass for the burst");
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert_eq!(passes.load(Ordering::SeqCst), 2, "resync");
        changed.notify_one();
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop_tx.send(()).unwrap();
        task.await.unwrap();
        assert_eq!(passes.load(Ordering::SeqCst), 2, "stopped mid-debounce");
    }
}
