//! Apache Airflow connections: the URI form (`AIRFLOW_CONN_<ID>`), the JSON of
//! `airflow connections export`, and the mapping of Airflow connection types onto
//! patchbay's catalog. Pure functions: the CLI reads and writes the files.

pub mod mapping;
pub mod uri;

pub use mapping::{export, import, Imported, TypeMapping, MAPPINGS};
pub use uri::{from_export_json, parse_uri, to_export_json, to_uri, AirflowConn, AirflowError};

/// The conn_id of an `AIRFLOW_CONN_<ID>` variable (Airflow lower-cases it).
pub fn conn_id_of_env_var(var: &str) -> Option<String> {
    var.strip_prefix("AIRFLOW_CONN_").map(str::to_lowercase)
}

/// A patchbay name for an Airflow conn_id: lower-cased, characters outside
/// `[a-z0-9._-]` replaced by `-`, cut to 63 characters; `None` if nothing is left.
pub fn name_for_conn_id(conn_id: &str) -> Option<String> {
    let mut s: String = conn_id
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let start = s.find(|c: char| c.is_ascii_alphanumeric())?;
    s.drain(..start);
    s.truncate(63);
    Some(s)
}

#[cfg(test)]
mod tests;
