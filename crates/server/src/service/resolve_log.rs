//! Group commit of resolves' audit events. A resolve answers only after its event is
//! committed (no record, no secret), but the events of resolves arriving together share one
//! transaction: the audit chain has one writer, and committing once per batch instead of
//! once per resolve is what lets resolve keep up with many concurrent jobs.
//!
//! One task per process drains the queue: it takes what is waiting (up to [`MAX_BATCH`]),
//! commits it, and wakes every caller of that batch. If a batch fails, its records are
//! retried one by one, so one bad record fails only its own resolve.
//!
//! A resolve served from the resolve cache (crate::materials) sends its record *checked*:
//! the batch's transaction reads the material generation, leaves out each checked record
//! whose material is older, and answers it [`Logged::Stale`], so that resolve reads the
//! database and records again.

use patchbay_core::Error;
use patchbay_store::{Recorded, Store, UseRecord};
use tokio::sync::{mpsc, oneshot};

use crate::error::{ApiError, ApiResult};

/// Most events committed in one transaction.
pub const MAX_BATCH: usize = 256;

/// What became of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logged {
    /// Committed. `generation`: the material generation the transaction saw, if it read it.
    Recorded { generation: Option<i64> },
    /// Not written: the record was checked and the material generation has moved to
    /// `generation` since its material was read.
    Stale { generation: i64 },
}

type Done = oneshot::Sender<Result<Logged, Error>>;

struct Pending {
    record: UseRecord,
    done: Done,
}

pub struct ResolveLog {
    queue: mpsc::UnboundedSender<Pending>,
}

impl ResolveLog {
    /// Starts the committing task (it ends when the last handle is dropped).
    pub fn start(store: Store) -> Self {
        let (queue, mut rx) = mpsc::unbounded_channel::<Pending>();
        tokio::spawn(async move {
            let mut records: Vec<UseRecord> = Vec::with_capacity(MAX_BATCH);
            let mut waiting: Vec<Done> = Vec::with_capacity(MAX_BATCH);
            while let Some(first) = rx.recv().await {
                let mut next = Some(first);
                while let Some(p) = next {
                    records.push(p.record);
                    waiting.push(p.done);
                    next = if records.len() < MAX_BATCH {
                        rx.try_recv().ok()
                    } else {
                        None
                    };
                }
                commit(&store, &mut records, &mut waiting).await;
            }
        });
        Self { queue }
    }

    /// Records one resolve; returns once its transaction committed (or found the record
    /// stale).
    pub async fn record(&self, record: UseRecord) -> ApiResult<Logged> {
        let (done, wait) = oneshot::channel();
        self.queue
            .send(Pending { record, done })
            .map_err(|_| ApiError(Error::internal()))?;
        match wait.await {
            Ok(Ok(logged)) => Ok(logged),
            Ok(Err(e)) => Err(ApiError(e)),
            Err(_) => Err(ApiError(Error::internal())),
        }
    }
}

/// What each record of a committed batch became.
fn outcomes(recorded: &Recorded, len: usize) -> Vec<Logged> {
    let mut out = vec![
        Logged::Recorded {
            generation: recorded.generation
        };
        len
    ];
    for &i in &recorded.stale {
        if let (Some(slot), Some(generation)) = (out.get_mut(i), recorded.generation) {
            *slot = Logged::Stale { generation };
        }
    }
    out
}

async fn commit(store: &Store, records: &mut Vec<UseRecord>, waiting: &mut Vec<Done>) {
    match store.record_uses(records).await {
        Ok(recorded) => {
            for (done, logged) in waiting.drain(..).zip(outcomes(&recorded, records.len())) {
                let _ = done.send(Ok(logged));
            }
        }
        Err(e) if records.len() == 1 => {
            let e = ApiError::from(e).0;
            for done in waiting.drain(..) {
                let _ = done.send(Err(e.clone()));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, events = records.len(), "resolve audit batch failed; recording one by one");
            for (record, done) in records.iter().zip(waiting.drain(..)) {
                let r = store
                    .record_uses(std::slice::from_ref(record))
                    .await
                    .map(|recorded| outcomes(&recorded, 1)[0])
                    .map_err(|e| ApiError::from(e).0);
                let _ = done.send(r);
            }
        }
    }
    records.clear();
}
