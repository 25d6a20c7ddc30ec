//! The agent on the workers' network path (issue 7, acceptance 3): the real binary serves
//! inside one network namespace, the real agent runs inside another, and a PostgreSQL
//! listens only in the agent's (scripts/netns.sh). Testing the database from the server
//! fails at tcp; testing it through the zone's agent succeeds. The canary secret is looked
//! for in both processes' logs.
//!
//! Needs root, `ip` and the PostgreSQL 15 binaries; without them the test prints SKIPPED
//! with the reason (and fails under CI=true).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_patchbay");
const CANARY: &str = "canary-agent-5e1f0a93";
const PGBIN: &str = "/usr/lib/postgresql/15/bin";
/// The port inside the server's namespace (its own network stack: no collision).
const PORT: u16 = 8420;

fn skip(reason: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("agent namespace test cannot run under CI: {reason}");
    }
    eprintln!("SKIPPED: agent namespace test: {reason}");
}

/// Why the test cannot run here, if it cannot.
fn missing_prerequisite() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("needs root for ip netns".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("the `ip` command is missing".into());
    }
    if !Path::new(PGBIN).join("initdb").exists() {
        return Some(format!("no PostgreSQL binaries in {PGBIN}"));
    }
    if Command::new("curl").arg("--version").output().is_err() {
        return Some("curl is missing".into());
    }
    None
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/netns.sh")
}

/// The namespaces of this run; torn down on drop (also when an assertion fails).
struct Netns {
    suffix: String,
}

impl Netns {
    fn up() -> Self {
        // Unique per run: parallel runs get their own pair.
        let suffix = format!("{:x}", std::process::id() % 0xff_ffff);
        let ns = Netns { suffix };
        let out = Command::new("bash")
            .arg(script())
            .args(["up", &ns.suffix])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "netns.sh up: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ns
    }
    fn srv(&self) -> String {
        format!("pb-srv-{}", self.suffix)
    }
    fn agt(&self) -> String {
        format!("pb-agt-{}", self.suffix)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .args(["down", &self.suffix])
            .output();
    }
}

/// A process whose output is collected, killed on drop.
struct Proc {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Proc {
    fn spawn(mut cmd: Command) -> Self {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        for stream in [
            Box::new(child.stderr.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stdout.take().unwrap()),
        ] {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        Proc { child, log }
    }
    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// curl inside the server's namespace, as `token`.
fn http(ns: &Netns, token: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &ns.srv(),
        "curl",
        "-s",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
    ])
    .args(["-X", method, "-H", "Content-Type: application/json", "-H"])
    .arg(format!("Authorization: Bearer {token}"));
    if let Some(b) = body {
        cmd.args(["--data-binary", &b.to_string()]);
    }
    let out = cmd
        .arg(format!("http://127.0.0.1:{PORT}{path}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        code.trim().parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

/// The CLI inside the server's namespace (token from the data dir, as an operator would).
fn cli(ns: &Netns, data: &Path, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.srv(), BIN])
        .args(args)
        .env("PATCHBAY_URL", format!("http://127.0.0.1:{PORT}"))
        .env("PATCHBAY_DATA_DIR", data)
        .env_remove("PATCHBAY_TOKEN")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "patchbay {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let until = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn start_agent(ns: &Netns, token: &str) -> Proc {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.agt(), BIN, "agent", "--zone", "dc1"])
        .args(["--server", &format!("http://10.213.7.1:{PORT}")])
        // The database is on the agent's own loopback, which the guard denies by default.
        .args(["--network-allow", "127.0.0.1"])
        .env("PATCHBAY_TOKEN", token)
        .env("PATCHBAY_LOG", "debug,hyper=info,reqwest=info");
    Proc::spawn(cmd)
}

#[test]
fn a_database_only_the_agent_reaches_is_tested_through_the_zones_agent() {
    if let Some(reason) = missing_prerequisite() {
        skip(&reason);
        return;
    }
    let ns = Netns::up();
    let data = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.srv(), BIN, "serve"])
        .env("PATCHBAY_LISTEN", format!("0.0.0.0:{PORT}"))
        .env("PATCHBAY_DATA_DIR", data.path())
        .env_remove("PATCHBAY_DATABASE_URL")
        // The same policy as the agent's: loopback allowed, so the server's own attempt
        // reaches its TCP stage (and fails there: the database is not in its namespace).
        .env("PATCHBAY_NETWORK_ALLOW", "127.0.0.1")
        .env("PATCHBAY_AGENT_POLL", "2s")
        .env("PATCHBAY_LOG", "debug,sqlx=warn,hyper=info");
    let server = Proc::spawn(cmd);
    let token_file = data.path().join("initial-admin-token");
    wait_for("the server", Duration::from_secs(30), || {
        token_file.exists() && http(&ns, "", "GET", "/api/v1/health", None).0 == 200
    });
    let admin = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_owned();

    // A zone, an agent token (through the CLI), two connections to the same database.
    let created = cli(
        &ns,
        data.path(),
        &[
            "zones",
            "create",
            "dc1",
            "--description",
            "agent namespace",
            "-o",
            "json",
        ],
    );
    let zone: Value = serde_json::from_str(&created).unwrap();
    let zone_id = zone["id"].as_str().unwrap().to_owned();
    let agent_token = cli(
        &ns,
        data.path(),
        &["zones", "agent-token", "dc1", "--name", "agt1"],
    )
    .trim()
    .to_owned();
    assert!(agent_token.starts_with("pbt_"), "{agent_token}");
    let (_, projects) = http(
        &ns,
        &admin,
        "GET",
        "/api/v1/workspaces/default/projects",
        None,
    );
    let project = projects["items"][0]["id"].as_str().unwrap().to_owned();
    let mut ids = vec![];
    for (name, zone) in [("direct", Value::Null), ("via-agent", json!("dc1"))] {
        let (code, c) = http(
            &ns,
            &admin,
            "POST",
            &format!("/api/v1/projects/{project}/connections"),
            Some(&json!({"name": name, "type": "postgresql", "zone": zone,
                "settings": {"host": "127.0.0.1", "port": 55432, "database": "postgres",
                             "username": "postgres", "sslmode": "disable"},
                "secrets": {"password": CANARY}})),
        );
        assert_eq!(code, 201, "{c}");
        ids.push(c["id"].as_str().unwrap().to_owned());
    }
    let test = |id: &str| {
        let (code, r) = http(
            &ns,
            &admin,
            "POST",
            &format!("/api/v1/connections/{id}/test"),
            None,
        );
        assert_eq!(code, 200, "{r}");
        r
    };

    // From the server's namespace the database does not exist: the test fails at tcp.
    let direct = test(&ids[0]);
    assert_eq!(direct["ok"], false, "{direct}");
    assert_eq!(direct["error"]["stage"], "tcp", "{direct}");

    // No agent yet: the zoned test says so, at the agent stage.
    let early = test(&ids[1]);
    assert_eq!(early["error"]["stage"], "agent", "{early}");
    assert_eq!(early["error"]["class"], "agent_unavailable", "{early}");

    let mut agent = start_agent(&ns, &agent_token);
    let zone_path = format!("/api/v1/zones/{zone_id}");
    wait_for("a healthy agent", Duration::from_secs(20), || {
        http(&ns, &admin, "GET", &zone_path, None).1["healthy"] == true
    });
    let (_, z) = http(&ns, &admin, "GET", &zone_path, None);
    assert_eq!(z["agents"][0]["name"], "agt1", "{z}");
    assert_eq!(z["agents"][0]["version"], env!("CARGO_PKG_VERSION"), "{z}");
    assert_eq!(z["connections"][0]["name"], "via-agent", "{z}");

    // Through the agent, the same target answers: every stage ok (none failed, none
    // skipped but TLS, which sslmode=disable turns off).
    let via = test(&ids[1]);
    eprintln!("from the server: {direct}\nthrough the agent: {via}");
    assert_eq!(via["ok"], true, "{via} agent log: {}", agent.log());
    let stages = via["stages"].as_array().unwrap();
    assert_eq!(stages[0]["stage"], "agent", "{via}");
    for s in stages {
        let expected = if s["stage"] == "tls" || s["stage"] == "permissions" {
            s["status"] == "ok" || s["status"] == "skipped"
        } else {
            s["status"] == "ok"
        };
        assert!(expected, "stage {s} in {via}");
    }
    for wanted in ["agent", "dns", "tcp", "auth", "query"] {
        assert!(
            stages
                .iter()
                .any(|s| s["stage"] == wanted && s["status"] == "ok"),
            "{wanted} not ok in {via}"
        );
    }
    // The zone list (CLI) shows the agent up.
    let listed: Value =
        serde_json::from_str(&cli(&ns, data.path(), &["zones", "list", "-o", "json"])).unwrap();
    assert_eq!(listed["items"][0]["healthy"], true, "{listed}");

    // The agent token reaches nothing but the agent endpoints.
    for (method, path) in [
        ("GET", "/api/v1/workspaces".to_owned()),
        ("GET", format!("/api/v1/connections/{}", ids[1])),
        ("POST", format!("/api/v1/connections/{}/test", ids[1])),
        ("GET", zone_path.clone()),
        ("POST", "/api/v1/tokens".to_owned()),
    ] {
        let (code, body) = http(
            &ns,
            &agent_token,
            method,
            &path,
            Some(&json!({"name": "x"})),
        );
        assert_eq!(code, 403, "{method} {path}: {body}");
    }

    // SIGTERM stops the agent cleanly; once its health window passes, the zone is down
    // and a test says no agent is there.
    let pid = agent.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let until = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = agent.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < until,
            "the agent ignored SIGTERM: {}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "agent exit {status}: {}", agent.log());
    assert!(agent.log().contains("agent stopped"), "{}", agent.log());
    wait_for(
        "the zone to turn unhealthy",
        Duration::from_secs(15),
        || http(&ns, &admin, "GET", &zone_path, None).1["healthy"] == false,
    );
    let late = test(&ids[1]);
    assert_eq!(late["error"]["class"], "agent_unavailable", "{late}");
    assert!(
        late["error"]["message"].as_str().unwrap().contains("dc1"),
        "{late}"
    );

    // The secret went to the agent for one test, and into no log.
    for (who, log) in [("agent", agent.log()), ("server", server.log())] {
        assert!(!log.is_empty(), "{who} log is empty");
        assert!(
            !log.contains(CANARY),
            "the {who} log carries the secret:\n{log}"
        );
        assert!(
            !log.contains(&agent_token),
            "the {who} log carries the agent token"
        );
    }
    assert!(
        server.log().contains("/api/v1/agent/claim"),
        "claims are logged by route"
    );
}
