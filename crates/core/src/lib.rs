//! patchbay's domain: connector schemas, connection validation, permissions, records and
//! the error table. Nothing in this crate does IO.

pub mod airflow;
pub mod error;
pub mod model;
pub mod names;
pub mod permission;
pub mod roles;
pub mod schema;
pub mod validate;

pub use error::{Error, ErrorCode};
