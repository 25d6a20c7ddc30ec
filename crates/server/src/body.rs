//! Request bodies. Bodies are parsed as a JSON object first and then read field by field,
//! so every error names a JSON pointer and no error message ever echoes a submitted value
//! (serde's own messages quote the offending input, which could be a secret).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use patchbay_core::ErrorCode;
use serde_json::{Map, Value};

use crate::error::{ApiError, ApiResult};

/// Largest accepted request body.
pub const MAX_BODY: usize = 1024 * 1024;

/// A JSON body's bytes (`application/json`, or `application/merge-patch+json`), at most
/// [`MAX_BODY`].
struct JsonBytes(Bytes);

impl<S: Send + Sync> FromRequest<S> for JsonBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> ApiResult<Self> {
        let ct = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim();
        if !ct.eq_ignore_ascii_case("application/json")
            && !ct.eq_ignore_ascii_case("application/merge-patch+json")
        {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "send the body as application/json (PATCH also takes application/merge-patch+json)",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(ErrorCode::PayloadTooLarge, "the body exceeds 1 MiB")
            } else {
                ApiError::new(ErrorCode::InvalidJson, "the body could not be read")
            }
        })?;
        Ok(Self(bytes))
    }
}

/// A JSON object body (`application/json`, or `application/merge-patch+json`).
pub struct JsonObject(pub Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> ApiResult<Self> {
        let JsonBytes(bytes) = JsonBytes::from_request(req, state).await?;
        object(&bytes).map(JsonObject)
    }
}

/// No body at all: neither a content type nor a length (or a zero one).
fn no_body(req: &Request) -> bool {
    req.headers().get(CONTENT_TYPE).is_none()
        && req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .is_none_or(|v| v.as_bytes() == b"0")
}

/// A body's bytes as a JSON object.
fn object(bytes: &[u8]) -> ApiResult<Map<String, Value>> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidJson,
            format!("malformed JSON at line {} column {}", e.line(), e.column()),
        )
    })?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::new(
            ErrorCode::InvalidJson,
            "the body must be a JSON object",
        )),
    }
}

/// An optional JSON object body: none at all (no Content-Length / empty) or a [`JsonObject`].
pub struct OptionalJsonObject(pub Option<Map<String, Value>>);

impl<S: Send + Sync> FromRequest<S> for OptionalJsonObject {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> ApiResult<Self> {
        if no_body(&req) {
            return Ok(Self(None));
        }
        Ok(Self(Some(JsonObject::from_request(req, state).await?.0)))
    }
}

/// An optional JSON object body, as [`OptionalJsonObject`] takes it, read straight into `T`
/// when it has exactly `T`'s shape (for hot paths: no map is built). `T` must deny unknown
/// fields and take each field as [`Fields`] would; any body it does not take is kept as an
/// object, for [`Fields`] to read and to name what is wrong.
pub enum Shaped<T> {
    Empty,
    Typed(T),
    Object(Map<String, Value>),
}

/// The extractor of a [`Shaped`] body.
pub struct OptionalShaped<T>(pub Shaped<T>);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for OptionalShaped<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> ApiResult<Self> {
        if no_body(&req) {
            return Ok(Self(Shaped::Empty));
        }
        let JsonBytes(bytes) = JsonBytes::from_request(req, state).await?;
        Ok(Self(match serde_json::from_slice::<T>(&bytes) {
            Ok(typed) => Shaped::Typed(typed),
            Err(_) => Shaped::Object(object(&bytes)?),
        }))
    }
}

/// Field-by-field reading of a body object with pointer-named errors.
pub struct Fields {
    map: Map<String, Value>,
}

fn wrong(field: &str, what: &str) -> ApiError {
    ApiError::field(
        ErrorCode::InvalidField,
        format!("/{field}"),
        format!("must be {what}"),
    )
}

impl Fields {
    /// Rejects keys outside `allowed`; keys in `ignored` (read-only fields of the resource's
    /// representation, so a GET body can be sent back) are dropped.
    pub fn new(mut map: Map<String, Value>, allowed: &[&str], ignored: &[&str]) -> ApiResult<Self> {
        map.retain(|k, _| !ignored.contains(&k.as_str()));
        if let Some(k) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(ApiError::field(
                ErrorCode::InvalidField,
                format!("/{}", patchbay_core::validate::pointer_segment(k)),
                format!("unknown field; allowed: {}", allowed.join(", ")),
            ));
        }
        Ok(Self { map })
    }

    pub fn has(&self, field: &str) -> bool {
        self.map.contains_key(field)
    }

    /// Present and explicitly `null`.
    pub fn is_null(&self, field: &str) -> bool {
        self.map.get(field).is_some_and(Value::is_null)
    }

    pub fn take(&mut self, field: &str) -> Option<Value> {
        self.map.remove(field)
    }

    pub fn required_string(&mut self, field: &str) -> ApiResult<String> {
        match self.map.remove(field) {
            Some(Value::String(s)) => Ok(s),
            None | Some(Value::Null) => Err(ApiError::field(
                ErrorCode::InvalidField,
                format!("/{field}"),
                "required",
            )),
            Some(_) => Err(wrong(field, "a string")),
        }
    }

    /// Absent or null → None.
    pub fn optional_string(&mut self, field: &str) -> ApiResult<Option<String>> {
        match self.map.remove(field) {
            Some(Value::String(s)) => Ok(Some(s)),
            None | Some(Value::Null) => Ok(None),
            Some(_) => Err(wrong(field, "a string or null")),
        }
    }

    pub fn optional_string_list(&mut self, field: &str) -> ApiResult<Option<Vec<String>>> {
        match self.map.remove(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) => items
                .into_iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => Ok(s),
                    _ => Err(ApiError::field(
                        ErrorCode::InvalidField,
                        format!("/{field}/{i}"),
                        "must be a string",
                    )),
                })
                .collect::<ApiResult<Vec<_>>>()
                .map(Some),
            Some(_) => Err(wrong(field, "an array of strings")),
        }
    }

    pub fn optional_object(&mut self, field: &str) -> ApiResult<Option<Map<String, Value>>> {
        match self.map.remove(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(_) => Err(wrong(field, "an object")),
        }
    }
}
