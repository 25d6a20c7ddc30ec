//! `patchbay exec` and `patchbay env` end to end: the real binary serves, the real binary's
//! CLI resolves with a runner token and runs `psql` against the local PostgreSQL with only
//! PATCHBAY_URL, PATCHBAY_TOKEN and PATH in its environment. The canary password is searched
//! for in the CLI's output, the server log and the data directory.

mod common;
use common::{files_contain, Server, BIN};

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

const CANARY: &str = "canary-exec-5e1f7a2b";

fn start(data_dir: &Path) -> Server {
    common::serve(data_dir, None, &[])
}

/// The CLI as an operator on the server host (admin token from the data directory).
fn admin(s: &Server, args: &[&str]) -> Output {
    let out = Command::new(BIN)
        .args(args)
        .env("PATCHBAY_URL", &s.url)
        .env("PATCHBAY_DATA_DIR", &s.data_dir)
        .env_remove("PATCHBAY_TOKEN")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "patchbay {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The CLI as a job on a worker: an environment holding only PATH, PATCHBAY_URL and the
/// runner token (plus `extra`).
fn runner(s: &Server, token: &str, args: &[&str], extra: &[(&str, &str)]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("PATCHBAY_URL", &s.url)
        .env("PATCHBAY_TOKEN", token)
        .envs(extra.iter().copied())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn psql_and_postgres_available() -> bool {
    let psql = Command::new("psql").arg("--version").output().is_ok();
    let pg = std::net::TcpStream::connect_timeout(
        &"127.0.0.1:5432".parse().unwrap(),
        Duration::from_millis(300),
    )
    .is_ok();
    if !(psql && pg) {
        let why = if psql {
            "PostgreSQL on 127.0.0.1:5432 not reachable"
        } else {
            "psql not installed"
        };
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{why} (CI=true)");
        }
        eprintln!("SKIPPED: {why}");
    }
    psql && pg
}

#[test]
fn exec_runs_psql_with_only_a_runner_token_and_never_shows_the_secret() {
    if !psql_and_postgres_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = start(&data);
    // The password (trust auth ignores it) comes from a file, not the command line.
    let secret_file = dir.path().join("pw");
    std::fs::write(&secret_file, CANARY).unwrap();
    let created = admin(
        &s,
        &[
            "connections",
            "create",
            "local-pg",
            "--type",
            "postgresql",
            "--set",
            "host=127.0.0.1",
            "--set",
            "port=5432",
            "--set",
            "database=test",
            "--set",
            "username=postgres",
            "--set",
            "sslmode=disable",
            "--secret",
            &format!("password=@{}", secret_file.display()),
            "-o",
            "json",
        ],
    );
    let id = serde_json::from_slice::<serde_json::Value>(&created.stdout).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    std::fs::remove_file(&secret_file).unwrap();
    let minted = admin(&s, &["tokens", "runner", "--ttl", "600"]);
    let token = String::from_utf8_lossy(&minted.stdout).trim().to_owned();
    assert!(token.starts_with("pbt_"));
    let mut seen = String::new();

    // Acceptance 2: psql with nothing but the URL and a runner token.
    let out = runner(
        &s,
        &token,
        &[
            "exec", "-c", "local-pg", "--", "psql", "-tA", "-c", "select 1",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    seen.push_str(&text(&out));

    // By id too, with a run id; the command's exit code is ours.
    let out = runner(
        &s,
        &token,
        &[
            "exec", "-c", &id, "--run-id", "dag-7", "--", "sh", "-c", "exit 7",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    seen.push_str(&text(&out));
    // The child gets the password and the generic variables, not the runner token.
    let check = format!(
        "[ \"$PGPASSWORD\" = '{CANARY}' ] && [ \"$PATCHBAY_LOCAL_PG_PASSWORD\" = '{CANARY}' ] \
         && [ \"$PGHOST\" = 127.0.0.1 ] && [ -z \"$PATCHBAY_TOKEN\" ]"
    );
    let out = runner(
        &s,
        &token,
        &["exec", "-c", "local-pg", "--", "sh", "-c", &check],
        &[("PATCHBAY_PROJECT", "default")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    seen.push_str(&text(&out));
    // A signal that ends the command is 128+n.
    let out = runner(
        &s,
        &token,
        &["exec", "-c", "local-pg", "--", "sh", "-c", "kill -TERM $$"],
        &[],
    );
    assert_eq!(out.status.code(), Some(128 + 15), "{}", text(&out));
    // A command that does not exist: 127, as in a shell.
    let out = runner(
        &s,
        &token,
        &["exec", "-c", "local-pg", "--", "no-such-command-pb"],
        &[],
    );
    assert_eq!(out.status.code(), Some(127), "{}", text(&out));
    seen.push_str(&text(&out));
    // An unknown connection: nothing runs.
    let out = runner(
        &s,
        &token,
        &["exec", "-c", "nope", "--", "sh", "-c", "exit 0"],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("not_found"), "{}", text(&out));

    // env: masked by default, in full with --reveal.
    let out = runner(&s, &token, &["env", "-c", "local-pg"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let dotenv = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(dotenv.contains("PGPASSWORD='********'"), "{dotenv}");
    assert!(dotenv.contains("PGHOST='127.0.0.1'"), "{dotenv}");
    seen.push_str(&text(&out));
    let out = runner(
        &s,
        &token,
        &["env", "-c", "local-pg", "--format", "json", "--reveal"],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["PGPASSWORD"], CANARY);

    // An expired runner token is refused.
    let short = admin(&s, &["tokens", "runner", "--ttl", "1"]);
    let short = String::from_utf8_lossy(&short.stdout).trim().to_owned();
    std::thread::sleep(Duration::from_millis(1200));
    let out = runner(
        &s,
        &short,
        &["exec", "-c", "local-pg", "--", "sh", "-c", "exit 0"],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("unauthenticated"), "{}", text(&out));

    assert!(!seen.contains(CANARY), "the CLI showed the secret: {seen}");
    let log = s.log.lock().unwrap().clone();
    assert!(log.contains("/resolve"), "no resolve in the server log");
    assert!(!log.contains(CANARY), "the server log holds the secret");
    let hits = files_contain(&s.data_dir, CANARY.as_bytes());
    assert!(hits.is_empty(), "plaintext secret in {hits:?}");
}
