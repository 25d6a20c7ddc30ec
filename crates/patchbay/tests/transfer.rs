//! `patchbay import`, `patchbay export` and `serve --provision` through the real binary:
//! interpolation from the CLI's and the server's environment, idempotence, sealed exports
//! refused with the wrong passphrase, Airflow files, 409 provisioned, and the canary
//! nowhere it must not be. (A test binary of its own: e2e.rs is already past 700 lines.)

mod common;
use common::{Server, BIN};

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

const CANARY: &str = "canary-transfer-9e1f37a2";

fn start(data_dir: &Path, provision: &Path) -> Server {
    let provision = provision.to_str().unwrap();
    common::serve(
        data_dir,
        None,
        &[
            ("PATCHBAY_PROVISION_DIR", provision),
            ("SERVER_SIDE_PW", CANARY),
        ],
    )
}

fn run(s: &Server, data: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("PATCHBAY_URL", &s.url)
        .env("PATCHBAY_DATA_DIR", data)
        .env_remove("PATCHBAY_TOKEN")
        .env_remove("PATCHBAY_EXPORT_PASSPHRASE")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn ok(out: &Output, transcript: &mut String) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "failed: {stderr}\n{stdout}");
    transcript.push_str(&stdout);
    transcript.push_str(&stderr);
    stdout
}

const DOC: &str = r#"apiVersion: 1
project: default
credentials:
  - name: etl-svc
    kind: username_password
    secrets:
      username: etl
      password: "${CLI_SIDE_PW}"
connections:
  - name: warehouse
    type: postgresql
    environment: prod
    settings: {host: db.internal, port: 5432, database: dw}
    credential: {name: etl-svc}
  - name: cache
    type: redis
    settings: {host: cache.internal}
    secrets: {password: "${file:redis.pw}"}
"#;

#[test]
fn import_export_and_provisioning_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let prov = dir.path().join("provisioning");
    std::fs::create_dir_all(&prov).unwrap();
    std::fs::write(
        prov.join("base.yaml"),
        "apiVersion: 1\nproject: infra\nconnections:\n  - name: prov-mq\n    type: rabbitmq\n    settings: {host: mq.internal}\n    secrets: {password: \"${SERVER_SIDE_PW}\"}\n",
    )
    .unwrap();
    let s = start(&data, &prov);
    let mut t = String::new();

    let files = dir.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("doc.yaml"), DOC).unwrap();
    std::fs::write(files.join("redis.pw"), format!("{CANARY}\n")).unwrap();
    let doc = files.join("doc.yaml");
    let doc = doc.to_str().unwrap();
    let env = [("CLI_SIDE_PW", CANARY)];

    // A missing variable names the place in the document, not a value.
    let missing = run(&s, &data, &["import", doc], &[]);
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains(
            "/credentials/0/secrets/password: environment variable CLI_SIDE_PW is not set"
        ),
        "{err}"
    );

    let dry = ok(&run(&s, &data, &["import", doc, "--dry-run"], &env), &mut t);
    assert!(dry.contains("dry run: 3 create"), "{dry}");
    let applied = ok(&run(&s, &data, &["import", doc], &env), &mut t);
    assert!(applied.contains("3 create"), "{applied}");
    let again = ok(&run(&s, &data, &["import", doc], &env), &mut t);
    assert!(again.contains("3 unchanged"), "{again}");

    // Plain export: no secret; sealed export: no secret in clear, opens only with the
    // right passphrase.
    let yaml = ok(&run(&s, &data, &["export"], &[]), &mut t);
    assert!(
        yaml.contains("apiVersion: 1") && yaml.contains("name: warehouse"),
        "{yaml}"
    );
    assert!(!yaml.contains(CANARY));
    std::fs::write(files.join("pass"), "correct horse battery staple\n").unwrap();
    std::fs::write(files.join("wrong"), "incorrect horse\n").unwrap();
    let sealed = files.join("sealed.yaml");
    ok(
        &run(
            &s,
            &data,
            &[
                "export",
                "--include-secrets",
                "--passphrase-file",
                files.join("pass").to_str().unwrap(),
                "-O",
                sealed.to_str().unwrap(),
            ],
            &[],
        ),
        &mut t,
    );
    let sealed_text = std::fs::read_to_string(&sealed).unwrap();
    assert!(sealed_text.contains("pbenc:v1:"), "{sealed_text}");
    assert!(!sealed_text.contains(CANARY));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&sealed).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "a file with secrets is private");
    }
    let refused = run(
        &s,
        &data,
        &[
            "import",
            sealed.to_str().unwrap(),
            "--passphrase-file",
            files.join("wrong").to_str().unwrap(),
        ],
        &[],
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("wrong passphrase"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let reimport = ok(
        &run(
            &s,
            &data,
            &["import", sealed.to_str().unwrap()],
            &[("PATCHBAY_EXPORT_PASSPHRASE", "correct horse battery staple")],
        ),
        &mut t,
    );
    assert!(reimport.contains("3 unchanged"), "{reimport}");

    // Airflow: URIs and the export JSON in; URIs out.
    std::fs::write(
        files.join("airflow.env"),
        format!(
            "# from the scheduler's environment\nexport AIRFLOW_CONN_AF_PG='postgresql://etl:{}@af-db.internal:5433/sales?sslmode=require'\nAIRFLOW_CONN_AF_HIVE=hive-cli://h\n",
            CANARY
        ),
    )
    .unwrap();
    let out = run(
        &s,
        &data,
        &["import", files.join("airflow.env").to_str().unwrap()],
        &[],
    );
    let stdout = ok(&out, &mut t);
    assert!(stdout.contains("af_pg"), "{stdout}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("hive_cli has no patchbay type"),
        "unmapped types are reported"
    );
    std::fs::write(
        files.join("airflow.json"),
        r#"{"af_api": {"conn_type": "http", "host": "https://api.example.com", "login": "bot", "password": "pw", "port": null, "schema": null, "extra": "{\"timeout\": \"5\"}"}}"#,
    )
    .unwrap();
    let stdout = ok(
        &run(
            &s,
            &data,
            &["import", files.join("airflow.json").to_str().unwrap()],
            &[],
        ),
        &mut t,
    );
    assert!(stdout.contains("af_api"), "{stdout}");
    let uris = ok(
        &run(&s, &data, &["export", "--format", "airflow-uri"], &[]),
        &mut t,
    );
    assert!(
        uris.contains(
            "AIRFLOW_CONN_AF_PG='postgres://etl@af-db.internal:5433/sales?sslmode=require'"
        ),
        "{uris}"
    );
    assert!(!uris.contains(CANARY));

    // Provisioned from the server's environment; read-only through the CLI.
    let del = run(
        &s,
        &data,
        &["connections", "delete", "prov-mq", "--project", "infra"],
        &[],
    );
    assert!(!del.status.success());
    let err = String::from_utf8_lossy(&del.stderr);
    assert!(
        err.contains("provisioned") && err.contains("base.yaml"),
        "{err}"
    );
    let got = ok(
        &run(
            &s,
            &data,
            &[
                "connections",
                "get",
                "prov-mq",
                "--project",
                "infra",
                "-o",
                "json",
            ],
            &[],
        ),
        &mut t,
    );
    assert!(got.contains("\"provisioned\": \"base.yaml\""), "{got}");

    assert!(!t.contains(CANARY), "the canary leaked into CLI output");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !s.log.lock().unwrap().contains(CANARY),
        "the canary leaked into the server log"
    );
}
