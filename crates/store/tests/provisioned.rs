//! The provisioning marker (migration 0012) on SQLite and PostgreSQL: set with its audit
//! record, read back on the object, listed for the start-up prune, cleared. PostgreSQL comes
//! from PATCHBAY_TEST_POSTGRES_URL; without a server the PostgreSQL half prints SKIPPED,
//! except under CI=true, where a missing peer is a failure.

mod common;
use common::audit;

use patchbay_crypto::WrappedKey;
use patchbay_store::{
    ConnectionWrite, CredentialLink, NewCredential, Provisionable, Store, StoredDataKey,
};
use serde_json::json;

async fn markers_are_set_listed_and_cleared(s: &Store) {
    let ws = patchbay_store::new_id();
    let dek = StoredDataKey {
        id: format!("dek-{ws}"),
        workspace_id: ws.clone(),
        wrapped: WrappedKey {
            kek_id: "file:abc".into(),
            nonce: vec![1; 12],
            ciphertext: vec![2; 48],
        },
    };
    s.create_workspace(&ws, "prov", &dek, &audit("ws", &ws))
        .await
        .unwrap();
    let p = s
        .create_project(&ws, "default", &audit("p", ""))
        .await
        .unwrap();
    let id = patchbay_store::new_id();
    let w = ConnectionWrite {
        name: "prov-pg".into(),
        connector_type: "postgresql".into(),
        description: String::new(),
        environment: None,
        tags: vec![],
        settings: json!({"host": "h"}).as_object().unwrap().clone(),
        zone: None,
    };
    s.create_connection(&id, &ws, &p.id, &w, &CredentialLink::None, &audit("c", &id))
        .await
        .unwrap();
    assert_eq!(s.get_connection(&id).await.unwrap().provisioned, None);
    s.set_provisioned(
        Provisionable::Connection,
        &id,
        Some("base.yaml"),
        &audit("connection.provision", &id),
    )
    .await
    .unwrap();
    assert_eq!(
        s.get_connection(&id).await.unwrap().provisioned.as_deref(),
        Some("base.yaml")
    );
    let listed = s.provisioned_connections().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].name.as_str(), listed[0].source.as_str()),
        ("prov-pg", "base.yaml")
    );
    assert_eq!(listed[0].project_id, p.id);
    let events = s.audit_for_target(&id).await.unwrap();
    assert!(events
        .iter()
        .any(|e| e.entry.action == "connection.provision"));

    let cred = patchbay_store::new_id();
    s.create_credential(
        &NewCredential {
            id: cred.clone(),
            workspace_id: ws.clone(),
            name: "svc".into(),
            kind: "api_key".into(),
            description: String::new(),
            owner_connection_id: None,
            external: None,
            public_fields: Default::default(),
            secrets: vec![],
            created_by: "test".into(),
        },
        &audit("cred", &cred),
    )
    .await
    .unwrap();
    s.set_provisioned(
        Provisionable::Credential,
        &cred,
        Some("base.yaml"),
        &audit("credential.provision", &cred),
    )
    .await
    .unwrap();
    assert_eq!(
        s.get_credential(&cred)
            .await
            .unwrap()
            .provisioned
            .as_deref(),
        Some("base.yaml")
    );
    assert_eq!(
        s.provisioned_credentials().await.unwrap(),
        [(cred.clone(), "svc".to_owned(), "base.yaml".to_owned())]
    );
    s.set_provisioned(Provisionable::Credential, &cred, None, &audit("x", &cred))
        .await
        .unwrap();
    assert!(s.provisioned_credentials().await.unwrap().is_empty());
}

#[tokio::test]
async fn provisioning_markers_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/t.db?mode=rwc", dir.path().display());
    markers_are_set_listed_and_cleared(&Store::connect(&url).await.unwrap()).await;
}

#[tokio::test]
async fn provisioning_markers_on_postgres() {
    if let Some((s, _db)) = common::postgres("prov").await {
        markers_are_set_listed_and_cleared(&s).await;
    }
}
