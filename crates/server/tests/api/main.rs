//! REST API behaviour, driven over real HTTP against the service started in-process on a
//! free port with a fresh SQLite data directory (PostgreSQL parity is the store suite's
//! job; the binary's end-to-end test runs this service on both).

mod access;
mod audit;
mod bad_requests;
mod connections;
mod credentials;
mod dependents;
mod events;
mod external;
mod import_export;
mod keys;
mod kit;
mod probe;
mod resolve;
mod resolve_cache;
mod resolve_formats;
mod sessions;
mod tls;
mod tokens;
mod ui;
mod ui_admin;
mod ui_flows;
mod zones;
