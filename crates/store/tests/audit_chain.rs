//! The audit hash chain in the store, on SQLite and on PostgreSQL (PATCHBAY_TEST_POSTGRES_URL;
//! SKIPPED without a server, a failure under CI=true): group-committed batches extend it in
//! order, tampering is found at the first broken seq, rows from before the chain are chained
//! at start, and a batch after another process appended still extends the real head.

mod common;
use common::{audit, workspace_and_project};

use patchbay_store::{AuditEntry, Store};
use serde_json::json;

on_both_backends!("chain": a_batch_of_uses_extends_the_audit_chain_in_order, a_checked_use_whose_material_moved_is_left_out, resolve_batches_and_reveals_of_one_credential_never_deadlock);

/// A runner's resolve of connection `target` in workspace `ws`, no credential.
fn resolve_use(ws: &str, target: &str, checked: Option<i64>) -> patchbay_store::UseRecord {
    patchbay_store::UseRecord {
        checked,
        credential: None,
        principal: "token:runner".into(),
        audit: AuditEntry::system(
            "token:runner",
            "connection.resolve",
            Some(ws),
            "connection",
            target,
            json!({}),
        ),
    }
}

/// Group commit (resolves): batches of 1, 5 and 70 events (more than one multi-row
/// statement) extend the chain in order, and ordinary appends continue it.
async fn a_batch_of_uses_extends_the_audit_chain_in_order(s: &Store) {
    use patchbay_store::{UseRecord, Verification};
    let (ws, _) = workspace_and_project(s).await;
    let before = match s.verify_audit().await.unwrap() {
        Verification::Ok { count, .. } => count,
        other => panic!("{other:?}"),
    };
    let mut n = 0;
    for size in [1, 5, 70] {
        let batch: Vec<UseRecord> = (0..size)
            .map(|i| resolve_use(&ws, &format!("c-{size}-{i}"), None))
            .collect();
        s.record_uses(&batch).await.unwrap();
        n += size;
    }
    s.create_project(&ws, "after", &audit("p", ""))
        .await
        .unwrap();
    match s.verify_audit().await.unwrap() {
        Verification::Ok {
            count, head_seq, ..
        } => {
            assert_eq!(count, before + n as i64 + 1);
            assert_eq!(head_seq, count);
        }
        other => panic!("chain broken: {other:?}"),
    }
    assert_eq!(resolved_targets(s, &ws).await.len(), n);
}

/// A resolve served from a replica's cache is recorded checked: in the batch's transaction,
/// a record whose material generation moved is left out (and reported), the others are
/// written; recording moves no generation.
async fn a_checked_use_whose_material_moved_is_left_out(s: &Store) {
    use patchbay_store::Recorded;
    let (ws, _) = workspace_and_project(s).await;
    let g = s.material_generation().await.unwrap();
    let record = |target: &str, checked: Option<i64>| resolve_use(&ws, target, checked);
    let batch = [
        record("fresh", Some(g)),
        record("stale", Some(g - 1)),
        record("unchecked", None),
        record("stale-too", Some(g - 2)),
    ];
    let recorded = s.record_uses(&batch).await.unwrap();
    assert_eq!(
        recorded,
        Recorded {
            generation: Some(g),
            stale: vec![1, 3]
        }
    );
    assert_eq!(s.material_generation().await.unwrap(), g);
    assert_eq!(resolved_targets(s, &ws).await, ["fresh", "unchecked"]);
    // One generation across the batch (PostgreSQL's single-statement path): stale as a
    // whole, or written as a whole.
    let recorded = s
        .record_uses(&[record("old-1", Some(g - 1)), record("old-2", Some(g - 1))])
        .await
        .unwrap();
    assert_eq!(recorded.stale, vec![0, 1]);
    let recorded = s
        .record_uses(&[record("new-1", Some(g)), record("new-2", Some(g))])
        .await
        .unwrap();
    assert_eq!(
        recorded,
        Recorded {
            generation: Some(g),
            stale: vec![]
        }
    );
    // Unchecked only: the generation is not read.
    let recorded = s.record_uses(&[record("plain", None)]).await.unwrap();
    assert_eq!(recorded, Recorded::default());
    assert!(matches!(
        s.verify_audit().await.unwrap(),
        patchbay_store::Verification::Ok { .. }
    ));
    assert_eq!(
        resolved_targets(s, &ws).await,
        ["fresh", "new-1", "new-2", "plain", "unchecked"]
    );
}

/// The targets of the workspace's `connection.resolve` events, sorted.
async fn resolved_targets(s: &Store, ws: &str) -> Vec<String> {
    let events = s
        .list_audit(
            &patchbay_store::AuditFilter {
                workspace_id: Some(ws.to_owned()),
                action: Some("connection.resolve".into()),
                ..Default::default()
            },
            100,
        )
        .await
        .unwrap();
    let mut targets: Vec<String> = events.into_iter().map(|e| e.entry.target_id).collect();
    targets.sort();
    targets
}
/// Resolve batches (PostgreSQL's single statement takes the chain head, then the last-use
/// rows) race reveals of the same credential through the same connection (audit event and
/// last use in one transaction): every writer of both takes the head first, so none waits
/// for the other in a cycle (PostgreSQL would abort one as a deadlock).
async fn resolve_batches_and_reveals_of_one_credential_never_deadlock(s: &Store) {
    use patchbay_store::UseRecord;
    let (ws, _) = workspace_and_project(s).await;
    let event = |action: &str| {
        AuditEntry::system(
            "token:runner",
            action,
            Some(&ws),
            "connection",
            "conn",
            json!({}),
        )
    };
    let batch: Vec<UseRecord> = (0..8)
        .map(|_| UseRecord {
            checked: None,
            credential: Some(("cred".into(), "conn".into())),
            principal: "token:runner".into(),
            audit: event("connection.resolve"),
        })
        .collect();
    let reveal = event("connection.reveal");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..2 {
        let (store, batch) = (s.clone(), batch.clone());
        tasks.spawn(async move {
            for _ in 0..40 {
                store.record_uses(&batch).await.unwrap();
            }
        });
        let (store, reveal) = (s.clone(), reveal.clone());
        tasks.spawn(async move {
            for _ in 0..40 {
                store
                    .record_reveal("cred", "conn", "user:u", &reveal)
                    .await
                    .unwrap();
            }
        });
    }
    tokio::time::timeout(std::time::Duration::from_secs(60), async {
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
    })
    .await
    .expect("writers finished");
    assert!(matches!(
        s.verify_audit().await.unwrap(),
        patchbay_store::Verification::Ok { count, .. } if count >= 2 * 40 * 9
    ));
}

// ---- The audit chain, on both backends, with raw access to tamper with rows. ----

/// What keeps a backend's data for the test: SQLite's directory, PostgreSQL's database.
enum Kept {
    Dir(tempfile::TempDir),
    /// Held, to be dropped after the test.
    Database {
        _db: common::TestDatabase,
    },
}

/// A fresh store plus a raw pool on the same database: SQLite, then PostgreSQL when
/// reachable (SKIPPED otherwise, a failure under CI=true).
async fn chain_backends() -> Vec<(&'static str, Store, sqlx::AnyPool, Kept)> {
    sqlx::any::install_default_drivers();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/t.db?mode=rwc", dir.path().display());
    let s = Store::connect(&url).await.unwrap();
    let raw = sqlx::AnyPool::connect(&url).await.unwrap();
    let mut out = vec![("sqlite", s, raw, Kept::Dir(dir))];
    if let Some(db) = common::TestDatabase::create("audit").await {
        let s = Store::connect(&db.url).await.unwrap();
        let raw = sqlx::AnyPool::connect(&db.url).await.unwrap();
        out.push(("postgres", s, raw, Kept::Database { _db: db }));
    }
    out
}

async fn six_events(s: &Store) {
    for i in 1..=6 {
        s.record_audit(&audit("test.event", &format!("t{i}")))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn the_audit_chain_verifies_and_names_the_first_broken_seq_after_tampering() {
    use patchbay_store::{ChainBreak, Verification};
    let cases: &[(&str, &str, i64, ChainBreak)] = &[
        (
            "edit a middle row",
            "UPDATE audit_events SET target_id = 'other' WHERE seq = 3",
            3,
            ChainBreak::HashMismatch,
        ),
        (
            "delete a middle row",
            "DELETE FROM audit_events WHERE seq = 3",
            3,
            ChainBreak::Gap,
        ),
        (
            "swap two rows",
            "UPDATE audit_events SET seq = -1 WHERE seq = 3; \
             UPDATE audit_events SET seq = 3 WHERE seq = 4; \
             UPDATE audit_events SET seq = 4 WHERE seq = -1",
            3,
            ChainBreak::Reordered,
        ),
        (
            "relink a row to hide an edit",
            "UPDATE audit_events SET prev_hash = hash WHERE seq = 4",
            4,
            ChainBreak::Reordered,
        ),
        (
            "delete the last row",
            "DELETE FROM audit_events WHERE seq = 6",
            6,
            ChainBreak::HeadMismatch,
        ),
        (
            "append a row with a made-up hash",
            "INSERT INTO audit_events (seq, at, actor, action, outcome, target_kind, target_id, \
             details, prev_hash, hash) SELECT 7, at, actor, action, outcome, target_kind, \
             target_id, details, hash, hash FROM audit_events WHERE seq = 6",
            7,
            ChainBreak::HashMismatch,
        ),
        (
            "delete the first row",
            "DELETE FROM audit_events WHERE seq = 1",
            1,
            ChainBreak::OriginMismatch,
        ),
    ];
    for (what, sql, seq, reason) in cases {
        for (backend, s, raw, _dir) in chain_backends().await {
            six_events(&s).await;
            match s.verify_audit().await.unwrap() {
                Verification::Ok {
                    count, head_seq, ..
                } => assert_eq!((count, head_seq), (6, 6), "{backend}"),
                other => panic!("{backend}: untouched chain broken: {other:?}"),
            }
            sqlx::raw_sql(sql).execute(&raw).await.unwrap();
            assert_eq!(
                s.verify_audit().await.unwrap(),
                Verification::Broken {
                    seq: *seq,
                    reason: *reason
                },
                "{backend}: {what}"
            );
        }
    }
}

#[tokio::test]
async fn rows_from_before_the_chain_are_chained_at_start_and_appends_never_fork() {
    use patchbay_store::Verification;
    for (backend, s, raw, kept) in chain_backends().await {
        s.record_audit(&audit("test.event", "first")).await.unwrap();
        // Rows as an older version wrote them: no seq, no hashes.
        for i in 0..3 {
            sqlx::query(
                "INSERT INTO audit_events (at, actor, action, workspace_id, target_kind, \
                 target_id, details) VALUES ($1, 'token:old', 'connection.update', NULL, \
                 'connection', $2, '{}')",
            )
            .bind(1_000 + i as i64)
            .bind(format!("old{i}"))
            .execute(&raw)
            .await
            .unwrap();
        }
        s.migrate().await.unwrap();
        match s.verify_audit().await.unwrap() {
            Verification::Ok { count, .. } => assert_eq!(count, 4, "{backend}"),
            other => panic!("{backend}: {other:?}"),
        }
        // Concurrent appends, from this store and (SQLite) from a second one on the same
        // file, as a second process would: one unbroken chain.
        let mut writers = vec![s.clone()];
        if let Kept::Dir(d) = &kept {
            let url = format!("sqlite://{}/t.db?mode=rwc", d.path().display());
            writers.push(Store::connect(&url).await.unwrap());
        } else {
            writers.push(s.clone());
        }
        let mut tasks = vec![];
        for (n, w) in writers.into_iter().enumerate() {
            for i in 0..15 {
                let w = w.clone();
                tasks.push(tokio::spawn(async move {
                    w.record_audit(&audit("test.concurrent", &format!("w{n}-{i}")))
                        .await
                        .unwrap()
                }));
            }
        }
        for t in tasks {
            t.await.unwrap();
        }
        let head = match s.verify_audit().await.unwrap() {
            Verification::Ok {
                count,
                head_seq,
                head_hash,
            } => {
                assert_eq!((count, head_seq), (34, 34), "{backend}");
                head_hash
            }
            other => panic!("{backend}: {other:?}"),
        };
        // An event that does not extend the head: SQLite's triggers refuse it.
        if backend == "sqlite" {
            let refused = sqlx::query(
                "INSERT INTO audit_events (seq, at, actor, action, outcome, target_kind, \
                 target_id, details, prev_hash, hash) \
                 VALUES (40, 5, 'a', 'b', 'success', 'c', 'd', '{}', 'x', 'y')",
            )
            .execute(&raw)
            .await;
            assert!(refused.is_err(), "a forked append was accepted");
            continue;
        }
        // PostgreSQL: a well-forged event appended behind the store's back has the right
        // hash, but the recorded head does not name it.
        let forged = audit("test.forged", "x");
        let details = forged.details.to_string();
        let hash = patchbay_store::event_hash(&head, 35, 5, &forged, &details);
        sqlx::query(
            "INSERT INTO audit_events (seq, at, actor, action, outcome, target_kind, target_id, \
             details, prev_hash, hash) VALUES (35, 5, $1, $2, 'success', $3, $4, $5, $6, $7)",
        )
        .bind(&forged.actor)
        .bind(&forged.action)
        .bind(&forged.target_kind)
        .bind(&forged.target_id)
        .bind(&details)
        .bind(&head)
        .bind(&hash)
        .execute(&raw)
        .await
        .unwrap();
        assert_eq!(
            s.verify_audit().await.unwrap(),
            Verification::Broken {
                seq: 35,
                reason: patchbay_store::ChainBreak::HeadMismatch
            },
            "{backend}"
        );
    }
}

/// Two processes on one SQLite file: the second appends, so the first one's remembered
/// head is stale; its next batch falls back to the locked head and the chain still verifies.
#[tokio::test]
async fn a_batch_after_another_process_appended_still_extends_the_real_head() {
    use patchbay_store::{UseRecord, Verification};
    let (a, dir) = common::sqlite().await;
    let b = Store::connect(&format!("sqlite://{}/t.db?mode=rwc", dir.path().display()))
        .await
        .unwrap();
    let batch = |tag: &str| -> Vec<UseRecord> {
        (0..3)
            .map(|i| UseRecord {
                checked: None,
                credential: None,
                principal: "token:runner".into(),
                audit: audit("connection.resolve", &format!("{tag}-{i}")),
            })
            .collect()
    };
    a.record_uses(&batch("a1")).await.unwrap();
    b.record_uses(&batch("b1")).await.unwrap();
    a.record_uses(&batch("a2")).await.unwrap();
    b.create_project(&workspace_and_project(&b).await.0, "x", &audit("p", ""))
        .await
        .unwrap();
    a.record_uses(&batch("a3")).await.unwrap();
    match a.verify_audit().await.unwrap() {
        Verification::Ok {
            count, head_seq, ..
        } => assert_eq!(count, head_seq),
        other => panic!("chain broken: {other:?}"),
    }
}

/// PostgreSQL: the connection that records batches in one statement breaks (here it is
/// terminated, as a server restart or failover would): the next batch still commits, once,
/// through the pool, and the one after opens a new batch connection.
#[tokio::test]
async fn a_batch_whose_connection_broke_is_recorded_once() {
    use patchbay_store::{UseRecord, Verification};
    let Some(db) = common::TestDatabase::create("chainbroken").await else {
        return;
    };
    let url = db.url.clone();
    let s = Store::connect(&url).await.unwrap();
    let admin = sqlx::AnyPool::connect(&url).await.unwrap();
    let (ws, _) = workspace_and_project(&s).await;
    let batch = |tag: &str| -> Vec<UseRecord> {
        (0..3)
            .map(|i| resolve_use(&ws, &format!("c-{tag}-{i}"), None))
            .collect()
    };
    let terminate = || async {
        let (n,): (i64,) = sqlx::query_as(&format!(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = '{}' AND datname = current_database()",
            patchbay_store::BATCH_APPLICATION_NAME
        ))
        .fetch_one(&admin)
        .await
        .unwrap();
        n
    };
    // The first batch learns the head; the second goes in one statement on the batch
    // connection.
    s.record_uses(&batch("a")).await.unwrap();
    s.record_uses(&batch("b")).await.unwrap();
    assert_eq!(terminate().await, 1, "the batch connection was in use");
    s.record_uses(&batch("c")).await.unwrap();
    s.record_uses(&batch("d")).await.unwrap();
    assert_eq!(terminate().await, 1, "a new batch connection was opened");
    assert_eq!(
        resolved_targets(&s, &ws).await.len(),
        12,
        "each batch recorded once"
    );
    assert!(matches!(
        s.verify_audit().await.unwrap(),
        Verification::Ok { .. }
    ));
}
