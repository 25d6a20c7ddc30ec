//! Static files compiled into the binary: the stylesheet and htmx (vendored from npm
//! `htmx.org`, version in `tests/ui/package.json`, licence `assets/htmx.LICENSE`). Their URLs
//! carry a hash of their content, so they are cached for a year and a new build is fetched
//! at once.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

pub struct Asset {
    pub name: &'static str,
    pub ext: &'static str,
    pub content_type: &'static str,
    pub bytes: &'static [u8],
}

/// FNV-1a, at compile time: a content fingerprint for the URL, not a security measure.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    h
}

pub static ASSETS: &[Asset] = &[
    Asset {
        name: "app",
        ext: "css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../../assets/app.css"),
    },
    Asset {
        name: "htmx-2.0.11",
        ext: "js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../assets/htmx.min.js"),
    },
];

impl Asset {
    fn file_name(&self) -> String {
        format!(
            "{}.{:08x}.{}",
            self.name,
            fnv1a(self.bytes) as u32,
            self.ext
        )
    }
}

/// The URL of the asset named `name` (`app` or `htmx-…`).
pub fn asset_path(name: &str) -> String {
    ASSETS
        .iter()
        .find(|a| a.name == name || a.name.starts_with(&format!("{name}-")))
        .map(|a| format!("/assets/{}", a.file_name()))
        .unwrap_or_default()
}

/// `GET /assets/{file}`.
pub async fn serve(Path(file): Path<String>) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.file_name() == file) else {
        return crate::error::ApiError::not_found("asset").into_response();
    };
    let mut resp = (StatusCode::OK, asset.bytes).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    resp
}
