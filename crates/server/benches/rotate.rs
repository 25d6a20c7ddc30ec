//! Data key rotation throughput: `cargo bench -p patchbay-server --bench rotate`.
//!
//! For SQLite (and PostgreSQL when reachable at PATCHBAY_TEST_POSTGRES_URL or
//! postgres://postgres@127.0.0.1:5432/postgres): starts the real service in-process, seeds
//! 100,000 credential secrets encrypted exactly as the server does, and times
//! `POST /api/v1/workspaces/default/keys/rotate-data` until the rotation is `done` (every
//! secret re-encrypted, the old key destroyed). Baselines in the same run, on the same rows:
//! - `crypto only`: decrypt + re-encrypt every row in memory (no database);
//! - `store only`: the same batched read + multi-row UPDATE transactions, ciphertext copied
//!   unchanged (no crypto).
//!
//! Results go to stdout and bench-results/rotate.json.

use std::time::{Duration, Instant};

use patchbay_crypto::{DataKey, EncryptedValue, MasterKey, SecretAad, SecretString, WrappedKey};
use serde_json::json;
use sqlx::{AnyPool, Row};

mod common;

const SECRETS: usize = 100_000;
const FIELDS: [&str; 4] = ["password", "api_key", "token", "private_key"];

async fn pool(url: &str) -> AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::any::AnyPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await
        .unwrap()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Seeds `SECRETS` credential secrets (25,000 credentials × 4 fields) under the default
/// workspace's data key, with multi-row inserts. Returns the workspace id.
async fn seed(db: &AnyPool, master: &MasterKey, postgres: bool) -> (String, DataKey) {
    let ws: String = sqlx::query("SELECT id FROM workspaces WHERE name = 'default'")
        .fetch_one(db)
        .await
        .unwrap()
        .get(0);
    let row =
        sqlx::query("SELECT id, kek_id, nonce, wrapped FROM data_keys WHERE workspace_id = $1")
            .bind(&ws)
            .fetch_one(db)
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
    let creds = SECRETS / FIELDS.len();
    let t = now();
    let mut tx = db.begin().await.unwrap();
    // `?` on SQLite (numbered placeholders make binding thousands quadratic), `$N` on
    // PostgreSQL.
    let placeholders = |n: usize| -> Vec<String> {
        (1..=n)
            .map(|i| {
                if postgres {
                    format!("${i}")
                } else {
                    "?".into()
                }
            })
            .collect()
    };
    for chunk in (0..creds).collect::<Vec<_>>().chunks(500) {
        let ph = placeholders(chunk.len() * 5);
        let rows: Vec<String> = ph
            .chunks(5)
            .map(|p| {
                format!(
                    "({}, {}, {}, 'basic', '', NULL, NULL, 1, 1, {}, {})",
                    p[0], p[1], p[2], p[3], p[4]
                )
            })
            .collect();
        let sql = format!(
            "INSERT INTO credentials (id, workspace_id, name, kind, description, owner_connection_id, \
             external, current_version, revision, created_at, updated_at) VALUES {}",
            rows.join(",")
        );
        let mut q = sqlx::query(&sql);
        for i in chunk {
            let id = format!("cred-{i:06}");
            q = q.bind(id.clone()).bind(ws.clone()).bind(id).bind(t).bind(t);
        }
        q.execute(&mut *tx).await.unwrap();
        let ph = placeholders(chunk.len() * FIELDS.len() * 5);
        let rows: Vec<String> = ph
            .chunks(5)
            .map(|p| format!("({}, 1, {}, {}, {}, {})", p[0], p[1], p[2], p[3], p[4]))
            .collect();
        let sql = format!(
            "INSERT INTO credential_secrets (credential_id, version, field, key_id, nonce, ciphertext) VALUES {}",
            rows.join(",")
        );
        let mut q = sqlx::query(&sql);
        for i in chunk {
            let cred = format!("cred-{i:06}");
            for f in FIELDS {
                let v = SecretString::new(format!("bench-secret-{cred}-{f}-0123456789abcdef"));
                let ev = dek.encrypt(&v, &SecretAad::credential(&ws, &cred, 1, f));
                q = q
                    .bind(cred.clone())
                    .bind(f)
                    .bind(ev.key_id)
                    .bind(ev.nonce)
                    .bind(ev.ciphertext);
            }
        }
        q.execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();
    (ws, dek)
}

struct Row_ {
    cred: String,
    field: String,
    ev: EncryptedValue,
}

async fn load_rows(db: &AnyPool) -> Vec<Row_> {
    sqlx::query("SELECT credential_id, field, key_id, nonce, ciphertext FROM credential_secrets")
        .fetch_all(db)
        .await
        .unwrap()
        .iter()
        .map(|r| Row_ {
            cred: r.get(0),
            field: r.get(1),
            ev: EncryptedValue {
                key_id: r.get(2),
                nonce: r.get(3),
                ciphertext: r.get(4),
            },
        })
        .collect()
}

/// Baseline: decrypt + encrypt every row in memory.
fn crypto_only(rows: &[Row_], ws: &str, from: &DataKey) -> f64 {
    let to = DataKey::generate();
    let t = Instant::now();
    for r in rows {
        let aad = SecretAad::credential(ws, &r.cred, 1, &r.field);
        let out = to.reencrypt(from, &r.ev, &aad).unwrap();
        std::hint::black_box(out);
    }
    t.elapsed().as_secs_f64()
}

/// Baseline: the rotation's database work without crypto — per batch of 1,000, one
/// transaction that reads the rows and writes them back with one multi-row upsert (the
/// statement shape rotation uses), ciphertext unchanged.
async fn store_only(db: &AnyPool, postgres: bool) -> f64 {
    let t = Instant::now();
    let mut after = String::new();
    loop {
        let mut tx = db.begin().await.unwrap();
        let sel = format!(
            "SELECT credential_id, version, field, key_id, nonce, ciphertext FROM credential_secrets \
             WHERE credential_id > $1 ORDER BY credential_id LIMIT 1000{}",
            if postgres { " FOR UPDATE" } else { "" }
        );
        let rows = sqlx::query(&sel)
            .bind(after.clone())
            .fetch_all(&mut *tx)
            .await
            .unwrap();
        if rows.is_empty() {
            break;
        }
        // Whole credentials only, so the keyset cursor does not split one.
        let last: String = rows.last().unwrap().get(0);
        let rows: Vec<_> = rows
            .iter()
            .filter(|r| rows.len() < 1000 || r.get::<String, _>(0) != last)
            .collect();
        // Placeholders in order of appearance: `?` on SQLite (numbered ones make binding
        // thousands of parameters quadratic), `$N` on PostgreSQL.
        let mut n = 0;
        let mut p = || {
            n += 1;
            if postgres {
                format!("${n}")
            } else {
                "?".to_owned()
            }
        };
        let mut values = String::new();
        for j in 0..rows.len() {
            if j > 0 {
                values.push(',');
            }
            values.push_str(&format!(
                "({},{},{},{},{},{})",
                p(),
                p(),
                p(),
                p(),
                p(),
                p()
            ));
        }
        let old = p();
        let sql = format!(
            "INSERT INTO credential_secrets (credential_id, version, field, nonce, ciphertext, key_id) \
             VALUES {values} ON CONFLICT (credential_id, version, field) DO UPDATE \
             SET key_id = excluded.key_id, nonce = excluded.nonce, ciphertext = excluded.ciphertext \
             WHERE credential_secrets.key_id = {old}"
        );
        let key: String = rows[0].get(3);
        let mut q = sqlx::query(&sql);
        for r in &rows {
            q = q
                .bind(r.get::<String, _>(0))
                .bind(r.get::<i64, _>(1))
                .bind(r.get::<String, _>(2))
                .bind(r.get::<Vec<u8>, _>(4))
                .bind(r.get::<Vec<u8>, _>(5))
                .bind(key.clone());
        }
        q = q.bind(key);
        q.execute(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
        after = rows.last().unwrap().get(0);
    }
    t.elapsed().as_secs_f64()
}

async fn run(backend: &str, database_url: Option<String>) -> serde_json::Value {
    let service = common::start(database_url.clone(), Default::default()).await;
    let (data, token) = (service.data.clone(), service.token.clone());
    let url =
        database_url.unwrap_or_else(|| format!("sqlite://{}", data.join("patchbay.db").display()));
    let db = pool(&url).await;
    let master = MasterKey::load_file(&data.join("master.key")).unwrap();
    let t = Instant::now();
    let (ws, dek) = seed(&db, &master, backend == "postgres").await;
    println!(
        "{backend}: seeded {SECRETS} secrets in {:.1}s",
        t.elapsed().as_secs_f64()
    );

    let base = service.base.clone();
    let client = reqwest::Client::new();

    // Baselines first, on the same rows.
    let rows = load_rows(&db).await;
    assert_eq!(rows.len(), SECRETS);
    let crypto_s = crypto_only(&rows, &ws, &dek);
    drop(rows);
    let store_s = store_only(&db, backend == "postgres").await;

    // The real rotation, through the API, until done.
    let t = Instant::now();
    let r: serde_json::Value = client
        .post(format!("{base}/api/v1/workspaces/default/keys/rotate-data"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["total"], SECRETS as i64, "{r}");
    let id = r["id"].as_str().unwrap().to_owned();
    loop {
        let r: serde_json::Value = client
            .get(format!("{base}/api/v1/keys/rotations/{id}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        match r["state"].as_str() {
            Some("done") => break,
            Some("running") => tokio::time::sleep(Duration::from_millis(10)).await,
            _ => panic!("rotation failed: {r}"),
        }
    }
    let rotate_s = t.elapsed().as_secs_f64();
    let left: i64 = sqlx::query("SELECT COUNT(*) FROM credential_secrets WHERE key_id = $1")
        .bind(dek.id())
        .fetch_one(&db)
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    db.close().await;
    service.state.store.close().await;

    let rate = |s: f64| (SECRETS as f64 / s).round();
    println!(
        "{backend}: rotate-data {:>9} secrets/s ({rotate_s:.2}s) | crypto only {:>9}/s | store only {:>9}/s | ratio to store-only {:.2}, to crypto-only {:.3}",
        rate(rotate_s),
        rate(crypto_s),
        rate(store_s),
        store_s / rotate_s,
        crypto_s / rotate_s
    );
    json!({
        "backend": backend,
        "secrets": SECRETS,
        "batch": std::env::var("PATCHBAY_ROTATION_BATCH").ok().and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(if backend == "postgres" { 5000 } else { 1000 }),
        "rotate_data": {"seconds": (rotate_s * 1000.0).round() / 1000.0, "secrets_per_second": rate(rotate_s)},
        "baseline_crypto_only": {"seconds": (crypto_s * 1000.0).round() / 1000.0, "secrets_per_second": rate(crypto_s)},
        "baseline_store_only": {"seconds": (store_s * 1000.0).round() / 1000.0, "secrets_per_second": rate(store_s)},
        "ratio_to_store_only": ((store_s / rotate_s) * 1000.0).round() / 1000.0,
        "ratio_to_crypto_only": ((crypto_s / rotate_s) * 1000.0).round() / 1000.0,
    })
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut results = vec![run("sqlite", None).await];
        match common::fresh_postgres("rotate") {
            Some((admin, url)) => {
                results.push(run("postgres", Some(url.clone())).await);
                common::drop_postgres(&admin, &url);
            }
            None => println!("postgres: SKIPPED (not reachable)"),
        }
        let out = json!({
            "benchmark": "rotate-data",
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "results": results,
        });
        common::write_results("rotate", &out);
    });
}
