//! The data of the crash tests: 10,000 secrets seeded through SQL and the crypto crate
//! exactly as the server encrypts them, and the check that every one still decrypts to its
//! original value with the key file(s) and that no ciphertext names a data key that is gone.

use std::collections::HashMap;
use std::path::PathBuf;

use patchbay_crypto::{DataKey, MasterKey, SecretAad, SecretString, WrappedKey};
use sqlx::{AnyPool, Row};

use super::{Env, CREDENTIALS};

pub(super) async fn pool(env: &Env) -> AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::any::AnyPoolOptions::new()
        .max_connections(2)
        .connect(&env.db_url())
        .await
        .unwrap()
}

pub(super) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

pub(super) fn expected(kind: &str, owner: &str, version: i64, field: &str) -> String {
    format!("{kind}-{owner}-{version}-{field}-value")
}

/// Seeds, through SQL and the crypto crate exactly as the server encrypts: `WORKSPACES`
/// workspaces with a data key each, and in `default` 1,000 credentials × 2 versions × 4
/// fields, 1,000 OAuth tokens and 1,000 connection secrets (10,000 ciphertexts). Returns
/// the number of secrets.
pub(super) async fn seed(env: &Env, workspaces: usize) -> usize {
    let db = pool(env).await;
    let master = MasterKey::load_file(&env.key_file()).unwrap();
    let ws: String = sqlx::query("SELECT id FROM workspaces WHERE name = 'default'")
        .fetch_one(&db)
        .await
        .unwrap()
        .get(0);
    let project: String = sqlx::query("SELECT id FROM projects WHERE workspace_id = $1")
        .bind(&ws)
        .fetch_one(&db)
        .await
        .unwrap()
        .get(0);
    let row =
        sqlx::query("SELECT id, kek_id, nonce, wrapped FROM data_keys WHERE workspace_id = $1")
            .bind(&ws)
            .fetch_one(&db)
            .await
            .unwrap();
    let dek_id: String = row.get(0);
    let dek = master
        .unwrap(
            &WrappedKey {
                kek_id: row.get(1),
                nonce: row.get(2),
                ciphertext: row.get(3),
            },
            &ws,
            &dek_id,
        )
        .unwrap();
    let t = now();
    let mut tx = db.begin().await.unwrap();
    for i in 1..workspaces {
        let id = format!("ws-{i:04}");
        sqlx::query("INSERT INTO workspaces (id, name, created_at) VALUES ($1, $2, $3)")
            .bind(&id)
            .bind(&id)
            .bind(t)
            .execute(&mut *tx)
            .await
            .unwrap();
        let k = DataKey::generate();
        let w = master.wrap(&k, &id);
        sqlx::query(
            "INSERT INTO data_keys (id, workspace_id, kek_id, nonce, wrapped, state, created_at) \
             VALUES ($1, $2, $3, $4, $5, 'active', $6)",
        )
        .bind(k.id())
        .bind(&id)
        .bind(w.kek_id)
        .bind(w.nonce)
        .bind(w.ciphertext)
        .bind(t)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    let mut n = 0;
    for i in 0..CREDENTIALS {
        let cred = format!("cred-{i:05}");
        sqlx::query(
            "INSERT INTO credentials (id, workspace_id, name, kind, description, owner_connection_id, \
             external, current_version, revision, created_at, updated_at) \
             VALUES ($1, $2, $1, 'basic', '', NULL, NULL, 2, 1, $3, $3)",
        )
        .bind(&cred)
        .bind(&ws)
        .bind(t)
        .execute(&mut *tx)
        .await
        .unwrap();
        for v in 1..=2i64 {
            sqlx::query(
                "INSERT INTO credential_versions (credential_id, version, state, secret_fields, \
                 public_fields, created_at, created_by) VALUES ($1, $2, $3, $4, '{}', $5, 'test')",
            )
            .bind(&cred)
            .bind(v)
            .bind(if v == 2 { "current" } else { "previous" })
            .bind(r#"["a","b","c","d"]"#)
            .bind(t)
            .execute(&mut *tx)
            .await
            .unwrap();
            for f in ["a", "b", "c", "d"] {
                let value = SecretString::new(expected("cs", &cred, v, f));
                let ev = dek.encrypt(&value, &SecretAad::credential(&ws, &cred, v, f));
                sqlx::query(
                    "INSERT INTO credential_secrets (credential_id, version, field, key_id, nonce, \
                     ciphertext) VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&cred)
                .bind(v)
                .bind(f)
                .bind(ev.key_id)
                .bind(ev.nonce)
                .bind(ev.ciphertext)
                .execute(&mut *tx)
                .await
                .unwrap();
                n += 1;
            }
        }
        let value = SecretString::new(expected("oauth", &cred, -1, "oauth_token"));
        let ev = dek.encrypt(&value, &SecretAad::oauth_token(&ws, &cred));
        sqlx::query(
            "INSERT INTO oauth_tokens (credential_id, key_id, nonce, ciphertext, expires_at, \
             generation) VALUES ($1, $2, $3, $4, NULL, 1)",
        )
        .bind(&cred)
        .bind(ev.key_id)
        .bind(ev.nonce)
        .bind(ev.ciphertext)
        .execute(&mut *tx)
        .await
        .unwrap();
        n += 1;
        let conn = format!("conn-{i:05}");
        sqlx::query(
            "INSERT INTO connections (id, workspace_id, project_id, name, type, description, \
             environment, tags, settings, version, created_at, updated_at) \
             VALUES ($1, $2, $3, $1, 'postgresql', '', NULL, '[]', '{}', 1, $4, $4)",
        )
        .bind(&conn)
        .bind(&ws)
        .bind(&project)
        .bind(t)
        .execute(&mut *tx)
        .await
        .unwrap();
        let value = SecretString::new(expected("conn", &conn, 0, "password"));
        let ev = dek.encrypt(&value, &SecretAad::connection(&ws, &conn, "password"));
        sqlx::query(
            "INSERT INTO connection_secrets (connection_id, field, key_id, nonce, ciphertext) \
             VALUES ($1, 'password', $2, $3, $4)",
        )
        .bind(&conn)
        .bind(ev.key_id)
        .bind(ev.nonce)
        .bind(ev.ciphertext)
        .execute(&mut *tx)
        .await
        .unwrap();
        n += 1;
    }
    tx.commit().await.unwrap();
    db.close().await;
    n
}

/// Every master key file present (key, .next, .previous), by id.
pub(super) fn master_keys(env: &Env) -> HashMap<String, MasterKey> {
    let mut out = HashMap::new();
    for suffix in ["", ".next", ".previous"] {
        let p = PathBuf::from(format!("{}{suffix}", env.key_file().display()));
        if p.exists() {
            let k = MasterKey::load_file(&p).unwrap();
            out.insert(k.id().to_owned(), k);
        }
    }
    out
}

/// Decrypts every ciphertext from the database with the key file(s); checks each names an
/// existing data key and decrypts to its original value. Returns how many were verified.
pub(super) async fn verify(env: &Env) -> usize {
    let masters = master_keys(env);
    let db = pool(env).await;
    let mut deks: HashMap<String, DataKey> = HashMap::new();
    for r in sqlx::query("SELECT id, workspace_id, kek_id, nonce, wrapped FROM data_keys")
        .fetch_all(&db)
        .await
        .unwrap()
    {
        let (id, ws, kek): (String, String, String) = (r.get(0), r.get(1), r.get(2));
        let m = masters.get(&kek).unwrap_or_else(|| {
            panic!("data key {id} names master key {kek}, which no key file holds")
        });
        let k = m
            .unwrap(
                &WrappedKey {
                    kek_id: kek.clone(),
                    nonce: r.get(3),
                    ciphertext: r.get(4),
                },
                &ws,
                &id,
            )
            .unwrap();
        deks.insert(id, k);
    }
    let mut n = 0;
    let queries = [
        // A connection's legacy row moved at start-up into the connection's own credential
        // keeps its value: it is checked against the connection's expected value.
        ("cs", "SELECT COALESCE(c.owner_connection_id, s.credential_id), s.version, s.field, s.key_id, s.nonce, s.ciphertext, c.workspace_id, s.credential_id \
                FROM credential_secrets s JOIN credentials c ON c.id = s.credential_id"),
        ("oauth", "SELECT s.credential_id, CAST(-1 AS BIGINT), 'oauth_token', s.key_id, s.nonce, s.ciphertext, c.workspace_id \
                FROM oauth_tokens s JOIN credentials c ON c.id = s.credential_id"),
        ("conn", "SELECT s.connection_id, CAST(0 AS BIGINT), s.field, s.key_id, s.nonce, s.ciphertext, c.workspace_id \
                FROM connection_secrets s JOIN connections c ON c.id = s.connection_id"),
    ];
    for (kind, q) in queries {
        for r in sqlx::query(q).fetch_all(&db).await.unwrap() {
            let (owner, version, field, key_id, ws): (String, i64, String, String, String) =
                (r.get(0), r.get(1), r.get(2), r.get(3), r.get(6));
            let dek = deks.get(&key_id).unwrap_or_else(|| {
                panic!("{kind} {owner}/{field} names data key {key_id}, which is gone")
            });
            let moved = kind == "cs" && owner.starts_with("conn-");
            let cred_id: String = if kind == "cs" {
                r.get(7)
            } else {
                owner.clone()
            };
            let aad = match kind {
                "cs" => SecretAad::credential(&ws, &cred_id, version, &field),
                "oauth" => SecretAad::oauth_token(&ws, &owner),
                _ => SecretAad::connection(&ws, &owner, &field),
            };
            let ev = patchbay_crypto::EncryptedValue {
                key_id: key_id.clone(),
                nonce: r.get(4),
                ciphertext: r.get(5),
            };
            let plain = dek
                .decrypt(&ev, &aad)
                .unwrap_or_else(|e| panic!("{kind} {owner}/{field}: {e}"));
            let want = if moved {
                expected("conn", &owner, 0, &field)
            } else {
                expected(kind, &owner, version, &field)
            };
            assert_eq!(plain.expose_secret(), want, "{kind} {owner}/{field}");
            n += 1;
        }
    }
    db.close().await;
    n
}
