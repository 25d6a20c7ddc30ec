//! Group commit of resolves' audit events. A resolve answers only after its event is
//! committed (no record, no secret), but the events of resolves arriving together share one
//! transaction: the audit chain has one writer, and committing once per batch instead of
//! once per resolve is what lets resolve keep up with many concurrent jobs.
//!
//! One task per process drains the queue: it takes what is waiting (up to [`MAX_BATCH`]),
//! commits it, and wakes every caller of that batch. If a batch fails, its records are
//! retried one by one, so one bad record fails only its own resolve.

use patchbay_core::Error;
use patchbay_store::{Store, UseRecord};
use tokio::sync::{mpsc, oneshot};

use crate::error::{ApiError, ApiResult};

/// Most events committed in one transaction.
pub const MAX_BATCH: usize = 256;

struct Pending {
    record: UseRecord,
    done: oneshot::Sender<Result<(), Error>>,
}

pub struct ResolveLog {
    queue: mpsc::UnboundedSender<Pending>,
}

impl ResolveLog {
    /// Starts the committing task (it ends when the last handle is dropped).
    pub fn start(store: Store) -> Self {
        let (queue, mut rx) = mpsc::unbounded_channel::<Pending>();
        tokio::spawn(async move {
            let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
            while let Some(first) = rx.recv().await {
                batch.push(first);
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(p) => batch.push(p),
                        Err(_) => break,
                    }
                }
                commit(&store, &mut batch).await;
            }
        });
        Self { queue }
    }

    /// Records one resolve; returns once its transaction committed.
    pub async fn record(&self, record: UseRecord) -> ApiResult<()> {
        let (done, wait) = oneshot::channel();
        self.queue
            .send(Pending { record, done })
            .map_err(|_| ApiError(Error::internal()))?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ApiError(e)),
            Err(_) => Err(ApiError(Error::internal())),
        }
    }
}

async fn commit(store: &Store, batch: &mut Vec<Pending>) {
    let records: Vec<UseRecord> = batch.iter().map(|p| p.record.clone()).collect();
    match store.record_uses(&records).await {
        Ok(()) => {
            for p in batch.drain(..) {
                let _ = p.done.send(Ok(()));
            }
        }
        Err(e) if batch.len() == 1 => {
            let e = ApiError::from(e).0;
            for p in batch.drain(..) {
                let _ = p.done.send(Err(e.clone()));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, events = batch.len(), "resolve audit batch failed; recording one by one");
            for p in batch.drain(..) {
                let r = store
                    .record_uses(std::slice::from_ref(&p.record))
                    .await
                    .map_err(|e| ApiError::from(e).0);
                let _ = p.done.send(r);
            }
        }
    }
}
