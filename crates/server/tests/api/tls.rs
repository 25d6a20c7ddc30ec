//! HTTPS served by patchbay itself: the certificate from PEM files, HSTS on every response,
//! a reload on SIGHUP that swaps the certificate for new connections, and a failed reload
//! that keeps the old one.

use std::sync::Arc;
use std::time::Duration;

use patchbay_server::tls::{dev_certificate, serve_tls, CertificateSlot, TlsFiles};

use crate::kit::Service;

/// A TLS listener for the kit's service; returns its port and the shutdown trigger.
async fn serve(s: &Service, slot: Arc<CertificateSlot>) -> (u16, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let router = patchbay_server::api::router(s.app_state.clone());
    tokio::spawn(async move {
        serve_tls(listener, router, slot, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    (port, tx)
}

/// GET /api/v1/health over HTTPS, trusting only `ca_pem`.
async fn health(port: u16, ca_pem: &str) -> Result<reqwest::Response, reqwest::Error> {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
        .get(format!("https://localhost:{port}/api/v1/health"))
        .send()
        .await
}

fn self_signed() -> (String, String) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    (c.cert.pem(), c.key_pair.serialize_pem())
}

#[tokio::test]
async fn https_serves_the_configured_certificate_with_hsts() {
    let s = Service::start().await;
    let files = dev_certificate(&s.dir.path().join("data")).unwrap();
    let key_mode = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(&files.key).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(key_mode, 0o600, "the private key is private");
    let ca = std::fs::read_to_string(&files.cert).unwrap();
    let slot = CertificateSlot::load(files.clone()).unwrap();
    let (port, _stop) = serve(&s, slot).await;

    let r = health(port, &ca).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["strict-transport-security"], "max-age=31536000");
    // A client that does not trust the certificate is refused at the handshake.
    let (other, _) = self_signed();
    assert!(health(port, &other).await.is_err());
    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/api/v1/health"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);
    // The development certificate is reused on the next start, not replaced.
    let again = dev_certificate(&s.dir.path().join("data")).unwrap();
    assert_eq!(std::fs::read_to_string(&again.cert).unwrap(), ca);
}

#[tokio::test]
async fn sighup_reloads_the_certificate_and_a_bad_file_keeps_the_old_one() {
    let s = Service::start().await;
    let dir = s.dir.path();
    let files = TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    let (old_cert, old_key) = self_signed();
    std::fs::write(&files.cert, &old_cert).unwrap();
    std::fs::write(&files.key, &old_key).unwrap();
    let slot = CertificateSlot::load(files.clone()).unwrap();
    patchbay_server::tls::reload_on_sighup(slot.clone());
    let (port, _stop) = serve(&s, slot.clone()).await;
    assert_eq!(health(port, &old_cert).await.unwrap().status(), 200);

    // A broken pair is refused by reload; the server keeps serving the old certificate.
    let (new_cert, new_key) = self_signed();
    std::fs::write(&files.cert, &new_cert).unwrap();
    std::fs::write(&files.key, &old_key).unwrap();
    let err = slot.reload().unwrap_err();
    assert!(err.contains("do not belong together"), "{err}");
    assert!(
        !err.contains("PRIVATE KEY"),
        "the error quotes no key material"
    );
    assert_eq!(health(port, &old_cert).await.unwrap().status(), 200);

    // The operator fixes the key and sends SIGHUP: new connections get the new certificate.
    std::fs::write(&files.key, &new_key).unwrap();
    let pid = std::process::id().to_string();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let mut swapped = false;
    for _ in 0..50 {
        if health(port, &new_cert).await.is_ok() {
            swapped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(swapped, "SIGHUP did not load the new certificate");
    assert!(
        health(port, &old_cert).await.is_err(),
        "the old certificate is gone"
    );
}
