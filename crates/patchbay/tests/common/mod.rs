//! What the binary's end-to-end tests share: `patchbay serve` started on a free port with
//! its log captured, and a search of a directory for a secret.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_patchbay");

/// A running `patchbay serve`; killed when dropped.
pub struct Server {
    pub child: Child,
    pub url: String,
    pub data_dir: PathBuf,
    /// Everything it printed (stdout and stderr), for canary greps and failure messages.
    pub log: Arc<Mutex<String>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// SIGKILL (no shutdown handler runs), then wait for the process to be gone; its log.
    pub fn kill(mut self) -> String {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.log.lock().unwrap().clone()
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `patchbay serve` with PATCHBAY_DATA_DIR `data_dir`, PATCHBAY_DATABASE_URL `database_url`
/// (else SQLite in the data dir) and `env` on top (which may override the debug log level),
/// once it accepts connections. A server that exits or is not up in 30 s fails the test with
/// its log.
pub fn serve(data_dir: &Path, database_url: Option<&str>, env: &[(&str, &str)]) -> Server {
    let port = free_port();
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .env("PATCHBAY_LISTEN", format!("127.0.0.1:{port}"))
        .env("PATCHBAY_DATA_DIR", data_dir)
        .env("PATCHBAY_LOG", "debug,sqlx=warn,hyper=info")
        .env_remove("PATCHBAY_DATABASE_URL")
        .env_remove("PATCHBAY_MASTER_KEY")
        .env_remove("PATCHBAY_MASTER_KEY_FILE")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(u) = database_url {
        cmd.env("PATCHBAY_DATABASE_URL", u);
    }
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
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("server exited with {status}: {}", log.lock().unwrap());
        }
        assert!(
            Instant::now() < deadline,
            "server did not start: {}",
            log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    Server {
        child,
        url: format!("http://127.0.0.1:{port}"),
        data_dir: data_dir.to_owned(),
        log,
    }
}

/// Files under `dir` (recursively) whose bytes contain `needle`.
pub fn files_contain(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = vec![];
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            hits.extend(files_contain(&p, needle));
        } else if std::fs::read(&p)
            .unwrap()
            .windows(needle.len())
            .any(|w| w == needle)
        {
            hits.push(p);
        }
    }
    hits
}
