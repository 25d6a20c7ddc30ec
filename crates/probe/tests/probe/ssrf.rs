//! The SSRF table: every attempt ends in network_blocked (or a 400-class invalid_settings)
//! before any socket opens to the denied address. Loopback targets use a sentinel port
//! whose listener counts connections: it must count none. Only one port of loopback (the
//! responder's) is allowed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use patchbay_probe::guard::{LookupFuture, Resolver, StaticResolver, SystemResolver};
use patchbay_probe::{ErrorClass, NetworkGuard, Policy, ProbeStage, StageStatus};
use serde_json::json;

use crate::http::responder;

/// Fixed answers for the `.test` names, the system resolver for the rest (`localhost`).
struct TestDns(StaticResolver);

impl Resolver for TestDns {
    fn lookup(&self, name: &str, port: u16) -> LookupFuture {
        if self.0 .0.contains_key(name) {
            self.0.lookup(name, port)
        } else {
            SystemResolver.lookup(name, port)
        }
    }
}

fn dns() -> Arc<TestDns> {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let mut m = HashMap::new();
    m.insert(
        "rebind.test".to_owned(),
        vec![ip("203.0.113.10"), ip("169.254.169.254")],
    );
    m.insert("internal.test".to_owned(), vec![ip("127.0.0.1")]);
    m.insert("v6meta.test".to_owned(), vec![ip("::ffff:169.254.169.254")]);
    m.insert("aws6.test".to_owned(), vec![ip("fd00:ec2::254")]);
    m.insert("alibaba.test".to_owned(), vec![ip("100.100.100.200")]);
    m.insert("zero.test".to_owned(), vec![ip("0.0.0.0")]);
    Arc::new(TestDns(StaticResolver(m)))
}

async fn sentinel() -> (u16, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok(_s) = l.accept().await {
            h.fetch_add(1, Ordering::SeqCst);
        }
    });
    (port, hits)
}

#[tokio::test]
async fn every_ssrf_attempt_is_refused_before_a_socket_opens() {
    let (s, hits) = sentinel().await;
    let redirects = vec![
        format!("http://127.0.0.1:{s}/"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        format!("http://[::1]:{s}/"),
        format!("http://localhost:{s}/"),
        "file:///etc/passwd".to_owned(),
        format!("http://2130706433:{s}/"),
        "http://metadata.google.internal/computeMetadata/v1/".to_owned(),
        format!("http://[::ffff:127.0.0.1]:{s}/"),
        "gopher://127.0.0.1:70/_".to_owned(),
        format!("http://user:pw@127.0.0.1:{s}/"),
    ];
    let allowed = responder(redirects.clone()).await;
    let guard = NetworkGuard::with_resolver(
        Policy::default()
            .allow(&format!("127.0.0.1:{allowed}"))
            .unwrap(),
        dns(),
    );

    // Host settings (PostgreSQL type): every notation of metadata, loopback and friends.
    let hosts = [
        "169.254.169.254",
        "2852039166",
        "0xa9fea9fe",
        "0xA9FEA9FE",
        "0251.0376.0251.0376",
        "169.254.43518",
        "0xa9.0xfe.0xa9.0xfe",
        "169.16689662",
        "[::ffff:169.254.169.254]",
        "::ffff:a9fe:a9fe",
        "::169.254.169.254",
        "64:ff9b::a9fe:a9fe",
        "169.254.169.254.",
        "fd00:ec2::254",
        "100.100.100.200",
        "metadata.google.internal",
        "METADATA.GOOGLE.INTERNAL.",
        "metadata.goog",
        "fe80::1",
        "[fe80::a9fe:a9fe]",
        "127.0.0.1",
        "127.1",
        "2130706433",
        "0x7f000001",
        "017700000001",
        "127.0.0.2",
        "::1",
        "::ffff:127.0.0.1",
        "localhost",
        "0.0.0.0",
        "0",
        "224.0.0.1",
        "255.255.255.255",
        "ff02::1",
        "::",
        "rebind.test",
        "internal.test",
        "v6meta.test",
        "aws6.test",
        "alibaba.test",
        "zero.test",
    ];
    let mut cases = 0;
    for host in hosts {
        let r = crate::kit::run(
            &guard,
            "postgresql",
            json!({"host": host, "port": s, "database": "d", "username": "u"}),
            &[("password", "p")],
            Duration::from_secs(3),
        )
        .await;
        let e = r.error.as_ref().unwrap_or_else(|| panic!("{host} passed"));
        assert_eq!(e.class, ErrorClass::NetworkBlocked, "{host}: {e:?}");
        assert_eq!(e.stage, ProbeStage::Dns, "{host}");
        assert_eq!(e.message, patchbay_probe::guard::Blocked::MESSAGE, "{host}");
        let tcp = r
            .stages
            .iter()
            .find(|x| x.stage == ProbeStage::Tcp)
            .unwrap();
        assert_eq!(tcp.status, StageStatus::Skipped, "{host}");
        cases += 1;
    }

    // URLs (HTTP family): metadata, credentials, schemes the type does not declare.
    let urls = [
        (
            "http://169.254.169.254/latest/meta-data",
            ErrorClass::NetworkBlocked,
        ),
        ("http://2852039166", ErrorClass::NetworkBlocked),
        ("http://0xa9fea9fe", ErrorClass::NetworkBlocked),
        (
            "http://[::ffff:169.254.169.254]",
            ErrorClass::NetworkBlocked,
        ),
        (
            "http://metadata.google.internal/computeMetadata/v1",
            ErrorClass::NetworkBlocked,
        ),
        (
            "http://100.100.100.200/latest/meta-data",
            ErrorClass::NetworkBlocked,
        ),
        (
            &*format!("http://localhost:{s}"),
            ErrorClass::NetworkBlocked,
        ),
        (&*format!("http://[::1]:{s}"), ErrorClass::NetworkBlocked),
        (
            &*format!("http://127.0.0.1:{s}"),
            ErrorClass::NetworkBlocked,
        ),
        (
            &*format!("http://user:pw@127.0.0.1:{allowed}"),
            ErrorClass::InvalidSettings,
        ),
        ("http://user@example.com", ErrorClass::InvalidSettings),
        ("file:///etc/passwd", ErrorClass::InvalidSettings),
        (
            &*format!("gopher://127.0.0.1:{allowed}/_"),
            ErrorClass::InvalidSettings,
        ),
        ("jar:http://127.0.0.1!/x", ErrorClass::InvalidSettings),
        ("dict://127.0.0.1:11211/stat", ErrorClass::InvalidSettings),
        ("ftp://127.0.0.1/", ErrorClass::InvalidSettings),
        ("ldap://127.0.0.1/", ErrorClass::InvalidSettings),
    ];
    for (url, class) in urls {
        let r = crate::kit::run(
            &guard,
            "rest",
            json!({"base_url": url}),
            &[],
            Duration::from_secs(3),
        )
        .await;
        let e = r.error.as_ref().unwrap_or_else(|| panic!("{url} passed"));
        assert_eq!(e.class, class, "{url}: {e:?}");
        let tcp = r
            .stages
            .iter()
            .find(|x| x.stage == ProbeStage::Tcp)
            .unwrap();
        assert_eq!(tcp.status, StageStatus::Skipped, "{url}");
        cases += 1;
    }

    // Redirects from the allowed responder: each hop is re-checked.
    for (i, target) in redirects.iter().enumerate() {
        let r = crate::kit::run(
            &guard,
            "rest",
            json!({"base_url": format!("http://127.0.0.1:{allowed}"), "health_check_path": format!("/r/{i}")}),
            &[],
            Duration::from_secs(3),
        )
        .await;
        let e = r
            .error
            .as_ref()
            .unwrap_or_else(|| panic!("redirect to {target} passed"));
        assert!(
            matches!(
                e.class,
                ErrorClass::NetworkBlocked | ErrorClass::InvalidSettings
            ),
            "redirect to {target}: {e:?}"
        );
        cases += 1;
    }

    assert!(cases >= 45, "{cases} cases");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "a denied address was contacted"
    );
}

#[tokio::test]
async fn a_deny_rule_refuses_a_private_range_that_is_allowed_by_default() {
    let guard = NetworkGuard::new(Policy::parse("", "10.0.0.0/8").unwrap());
    let r = crate::kit::run(
        &guard,
        "redis",
        json!({"host": "10.1.2.3", "port": 6379}),
        &[],
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(r.error.unwrap().class, ErrorClass::NetworkBlocked);
}

#[tokio::test]
async fn loopback_is_refused_by_the_default_policy() {
    let guard = NetworkGuard::new(Policy::default());
    let r = crate::kit::run(
        &guard,
        "redis",
        json!({"host": "127.0.0.1", "port": 6379}),
        &[],
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(r.error.unwrap().class, ErrorClass::NetworkBlocked);
}

#[tokio::test]
async fn a_kind_without_a_probe_says_so() {
    // Every catalog type has a probe now: a copy of one with an unknown kind stands in.
    let mut ty = crate::kit::ty("oracle").clone();
    ty.probe.kind = "nosuch".into();
    let r = patchbay_probe::probe(
        &ty,
        &serde_json::Map::new(),
        &std::collections::BTreeMap::new(),
        &crate::kit::loopback(),
        Duration::from_secs(1),
    )
    .await;
    let e = r.error.unwrap();
    assert_eq!(
        (e.stage, e.class),
        (ProbeStage::Resolve, ErrorClass::NotImplemented)
    );
    assert!(e
        .message
        .contains("not implemented yet for probe kind `nosuch`"));
}
