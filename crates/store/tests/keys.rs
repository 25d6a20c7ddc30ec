//! Key rotation at the store level, on SQLite and PostgreSQL: a data key is destroyed only
//! when no ciphertext names it, a batch that hits an integrity failure writes nothing, and
//! the 0003 triggers refuse a ciphertext naming a key that does not exist.

mod common;

use patchbay_crypto::{EncryptedValue, WrappedKey};
use patchbay_store::{
    AuditEntry, BatchOutcome, CiphertextRow, ConnectionWrite, CredentialLink, NewCredential,
    Reencrypt, StartRotation, Store, StoredDataKey,
};
use serde_json::json;

fn audit() -> AuditEntry {
    AuditEntry::system("system:test", "test", None, "test", "t", json!({}))
}

fn dek(id: &str, ws: &str) -> StoredDataKey {
    StoredDataKey {
        id: id.into(),
        workspace_id: ws.into(),
        wrapped: WrappedKey {
            kek_id: "file:abc".into(),
            nonce: vec![1; 12],
            ciphertext: vec![2; 48],
        },
    }
}

/// A connection's own credential holding one ciphertext.
fn owned(conn: &str, field: &str, ev: EncryptedValue) -> CredentialLink {
    CredentialLink::Owned(Box::new(NewCredential {
        id: format!("cred-{conn}"),
        workspace_id: "w1".into(),
        name: format!("connection/{conn}"),
        kind: "inline".into(),
        description: String::new(),
        owner_connection_id: Some(conn.into()),
        external: None,
        public_fields: Default::default(),
        secrets: vec![(field.into(), ev)],
        created_by: "test".into(),
    }))
}

/// "Re-encrypts" by tagging the ciphertext; refuses rows of field `bad`.
struct Fake(&'static str);
impl Reencrypt for Fake {
    fn reencrypt(&self, row: &CiphertextRow) -> Option<EncryptedValue> {
        if row.field == "bad" {
            return None;
        }
        Some(EncryptedValue {
            key_id: self.0.into(),
            nonce: vec![9; 12],
            ciphertext: row.value.ciphertext.clone(),
        })
    }
}

async fn rotation_destroys_the_old_key_only_when_no_ciphertext_names_it(s: &Store) {
    s.create_workspace("w1", "w1", &dek("k-old", "w1"), &audit())
        .await
        .unwrap();
    s.create_project("w1", "default", &audit()).await.unwrap();
    let p = s.list_projects("w1").await.unwrap()[0].id.clone();
    let ev = |k: &str| EncryptedValue {
        key_id: k.into(),
        nonce: vec![3; 12],
        ciphertext: vec![4; 20],
    };
    for i in 0..5 {
        let id = format!("c{i}");
        s.create_connection(
            &id,
            "w1",
            &p,
            &ConnectionWrite {
                name: id.clone(),
                connector_type: "postgresql".into(),
                description: String::new(),
                environment: None,
                tags: vec![],
                settings: Default::default(),
                zone: None,
            },
            &owned(&id, "password", ev("k-old")),
            &audit(),
        )
        .await
        .unwrap();
    }
    // A ciphertext naming a key that does not exist is refused by the database.
    let bad = s
        .create_connection(
            "c-bad",
            "w1",
            &p,
            &ConnectionWrite {
                name: "c-bad".into(),
                connector_type: "postgresql".into(),
                description: String::new(),
                environment: None,
                tags: vec![],
                settings: Default::default(),
                zone: None,
            },
            &owned("c-bad", "password", ev("k-missing")),
            &audit(),
        )
        .await;
    assert!(bad.is_err(), "a ciphertext naming no data key was stored");

    let rec = match s
        .start_data_rotation("r1", "w1", &dek("k-new", "w1"), &audit())
        .await
        .unwrap()
    {
        StartRotation::Started(r) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!((rec.total, rec.from_key.as_str()), (5, "k-old"));
    assert!(matches!(
        s.start_data_rotation("r2", "w1", &dek("k-other", "w1"), &audit())
            .await
            .unwrap(),
        StartRotation::AlreadyRunning(_)
    ));
    assert_eq!(s.active_data_key("w1").await.unwrap().id, "k-new");
    // Rows remain: the old key survives the finishing attempt.
    assert_eq!(
        s.finish_data_rotation("r1", "k-old", &audit())
            .await
            .unwrap(),
        5
    );
    assert!(s.data_key("k-old").await.is_ok());
    let n = s
        .reencrypt_batch("r1", "k-old", "k-new", 3, &Fake("k-new"))
        .await
        .unwrap();
    assert!(matches!(n, BatchOutcome::Done(3)), "{n:?}");
    assert_eq!(s.get_rotation("r1").await.unwrap().done, 3);
    assert!(matches!(
        s.reencrypt_batch("r1", "k-old", "k-new", 100, &Fake("k-new"))
            .await
            .unwrap(),
        BatchOutcome::Done(2)
    ));
    assert!(matches!(
        s.reencrypt_batch("r1", "k-old", "k-new", 100, &Fake("k-new"))
            .await
            .unwrap(),
        BatchOutcome::Done(0)
    ));
    assert_eq!(s.count_ciphertexts_under("k-new").await.unwrap(), 5);
    assert_eq!(
        s.finish_data_rotation("r1", "k-old", &audit())
            .await
            .unwrap(),
        0
    );
    assert!(s.data_key("k-old").await.is_err(), "old key destroyed");
    let r = s.get_rotation("r1").await.unwrap();
    assert_eq!((r.state.as_str(), r.done), ("done", 5));

    // An integrity failure in a batch writes nothing and names the row.
    s.create_connection(
        "c-int",
        "w1",
        &p,
        &ConnectionWrite {
            name: "c-int".into(),
            connector_type: "postgresql".into(),
            description: String::new(),
            environment: None,
            tags: vec![],
            settings: Default::default(),
            zone: None,
        },
        &owned("c-int", "bad", ev("k-new")),
        &audit(),
    )
    .await
    .unwrap();
    let rec = match s
        .start_data_rotation("r3", "w1", &dek("k-3", "w1"), &audit())
        .await
        .unwrap()
    {
        StartRotation::Started(r) => r,
        other => panic!("{other:?}"),
    };
    let out = s
        .reencrypt_batch("r3", &rec.from_key, "k-3", 100, &Fake("k-3"))
        .await
        .unwrap();
    match out {
        BatchOutcome::Failed { row } => assert!(row.contains("c-int") && row.contains("bad")),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.count_ciphertexts_under("k-new").await.unwrap(), 6);
    s.fail_rotation("r3", "x").await.unwrap();
    // Asking again resumes the failed rotation instead of creating another key.
    assert!(matches!(
        s.start_data_rotation("r4", "w1", &dek("k-4", "w1"), &audit())
            .await
            .unwrap(),
        StartRotation::Resumed(r) if r.id == "r3"
    ));
}

#[tokio::test]
async fn sqlite_rotation_invariants() {
    let (s, _dir) = common::sqlite().await;
    rotation_destroys_the_old_key_only_when_no_ciphertext_names_it(&s).await;
}

#[tokio::test]
async fn postgres_rotation_invariants() {
    if let Some((s, _db)) = common::postgres("keys").await {
        rotation_destroys_the_old_key_only_when_no_ciphertext_names_it(&s).await;
    }
}
