//! Group commit of resolves' audit events. A resolve answers only after its event is
//! committed (no record, no secret), but the events of resolves arriving together share one
//! transaction: the audit chain has one writer, and committing once per batch instead of
//! once per resolve is what lets resolve keep up with many concurrent jobs.
//!
//! One task per process drains the queue: it takes what is waiting (up to [`MAX_BATCH`]),
//! commits it, and wakes every caller of that batch. If a batch fails, its records are
//! retried one by one, so one bad record fails only its own resolve.
//!
//! On PostgreSQL the task runs on a thread of its own, with a single-threaded runtime: a
//! batch's answer is on the critical path of every resolve waiting behind it, and on the
//! service's runtime the task that reads it waits for a busy worker to poll the socket and
//! then queues behind the requests in hand (measured on one machine: the median run at
//! 0.223 of the bare route there, 0.269 on its own thread; docs/run-time.md). Only the
//! one-statement path runs there, on connections of its own; the transaction path (the
//! pool's connections) is handed back to the service's runtime. SQLite has no
//! one-statement path, and the task runs on the service's runtime.
//!
//! A resolve served from the resolve cache (crate::materials) sends its record *checked*:
//! the batch's transaction reads the material generation, leaves out each checked record
//! whose material is older, and answers it [`Logged::Stale`], so that resolve reads the
//! database and records again.

use patchbay_core::Error;
use patchbay_store::{Backend, Recorded, Store, UseRecord};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

use crate::error::{ApiError, ApiResult};

/// The name of the thread the task runs on with PostgreSQL, as `top -H` and
/// `/proc/PID/task/*/comm` show it (at most 15 bytes on Linux).
pub const THREAD_NAME: &str = "pb-resolve-log";

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
    /// Starts the committing task (it ends when the last handle is dropped). Call from
    /// within the service's runtime.
    pub fn start(store: Store) -> Self {
        let (queue, rx) = mpsc::unbounded_channel::<Pending>();
        let service = Handle::current();
        if store.backend() != Backend::Postgres {
            service.spawn(drain(store, None, rx));
            return Self { queue };
        }
        // Handed over once the thread runs, so that if it cannot be started the task runs
        // on the service's runtime instead.
        let handover = std::sync::Arc::new(std::sync::Mutex::new(Some((store, rx))));
        let theirs = handover.clone();
        let own = service.clone();
        let started = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .and_then(|rt| {
                std::thread::Builder::new()
                    .name(THREAD_NAME.into())
                    .spawn(move || {
                        if let Some((store, rx)) = theirs.lock().ok().and_then(|mut h| h.take()) {
                            rt.block_on(drain(store, Some(own), rx));
                        }
                    })
            });
        if let Err(e) = started {
            tracing::warn!(error = %e, "resolve log thread not started; committing on the service's runtime");
            if let Some((store, rx)) = handover.lock().ok().and_then(|mut h| h.take()) {
                service.spawn(drain(store, None, rx));
            }
        }
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

/// Takes what is waiting (up to [`MAX_BATCH`]) and commits it, until every handle is
/// dropped. `service`: the service's runtime, when this runs on another one.
async fn drain(store: Store, service: Option<Handle>, mut rx: mpsc::UnboundedReceiver<Pending>) {
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
        commit(&store, service.as_ref(), &mut records, &mut waiting).await;
    }
}

/// Records `batch`: in one statement if it can, else in a transaction through the pool,
/// run on the service's runtime (`service`) when this is not it.
async fn record(
    store: &Store,
    service: Option<&Handle>,
    batch: &[UseRecord],
) -> Result<Recorded, Error> {
    let at_once = store.record_uses_at_once(batch).await;
    match (at_once, service) {
        (Ok(Some(recorded)), _) => Ok(recorded),
        (Err(e), _) => Err(ApiError::from(e).0),
        (Ok(None), None) => store
            .record_uses_in_transaction(batch)
            .await
            .map_err(|e| ApiError::from(e).0),
        (Ok(None), Some(service)) => {
            let (store, batch) = (store.clone(), batch.to_vec());
            match service
                .spawn(async move { store.record_uses_in_transaction(&batch).await })
                .await
            {
                Ok(r) => r.map_err(|e| ApiError::from(e).0),
                // The service's runtime is shutting down.
                Err(_) => Err(Error::internal()),
            }
        }
    }
}

async fn commit(
    store: &Store,
    service: Option<&Handle>,
    records: &mut Vec<UseRecord>,
    waiting: &mut Vec<Done>,
) {
    match record(store, service, records).await {
        Ok(recorded) => {
            for (done, logged) in waiting.drain(..).zip(outcomes(&recorded, records.len())) {
                let _ = done.send(Ok(logged));
            }
        }
        Err(e) if records.len() == 1 => {
            for done in waiting.drain(..) {
                let _ = done.send(Err(e.clone()));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, events = records.len(), "resolve audit batch failed; recording one by one");
            for (one, done) in records.iter().zip(waiting.drain(..)) {
                let r = record(store, service, std::slice::from_ref(one))
                    .await
                    .map(|recorded| outcomes(&recorded, 1)[0]);
                let _ = done.send(r);
            }
        }
    }
    records.clear();
}
