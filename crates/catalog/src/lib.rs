//! The connector catalog: owns the data files under `catalog/` at the repository root
//! (`connectors/<id>.json`, `credential-kinds/<id>.json`), compiles them in at build time
//! (`build.rs`), parses them once into the `patchbay_core::schema` model, runs the load-time
//! semantic checks of [`check`](crate::check) on them, and indexes them for lookup.
//!
//! Adding a connector type is adding a JSON file; a malformed file fails this crate's tests
//! with an error naming the file and the offending property path.

mod check;
#[cfg(test)]
mod check_tests;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::OnceLock;

use patchbay_core::schema::{ConnectorType, CredentialKind, CATEGORIES};
use serde::de::DeserializeOwned;

pub use check::{CAPABILITIES, GROUPS, PROBE_KINDS};

mod files {
    include!(concat!(env!("OUT_DIR"), "/catalog_files.rs"));
}

/// The parsed and checked catalog: connector types sorted by (position of their category
/// in [`CATEGORIES`], name), credential kinds sorted by id.
#[derive(Debug, Clone)]
pub struct Catalog {
    types: Vec<ConnectorType>,
    kinds: Vec<CredentialKind>,
}

/// A catalog file that failed to parse or failed a semantic check. `message` starts with
/// the JSON pointer of the offending property when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogError {
    pub file: String,
    pub message: String,
}

impl fmt::Display for CatalogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "catalog file {}: {}", self.file, self.message)
    }
}

impl std::error::Error for CatalogError {}

impl Catalog {
    /// The catalog compiled in from `catalog/`, parsed and checked once.
    ///
    /// # Panics
    /// If the compiled-in files are invalid (this crate's tests guarantee they are not).
    pub fn builtin() -> &'static Catalog {
        static BUILTIN: OnceLock<Catalog> = OnceLock::new();
        BUILTIN.get_or_init(|| {
            Catalog::from_files(files::CONNECTOR_FILES, files::CREDENTIAL_KIND_FILES)
                .unwrap_or_else(|e| panic!("invalid built-in catalog: {e}"))
        })
    }

    /// Parses `(file name, JSON text)` pairs and runs every semantic check.
    pub fn from_files(
        connectors: &[(&str, &str)],
        kinds: &[(&str, &str)],
    ) -> Result<Catalog, CatalogError> {
        let mut parsed_kinds: Vec<CredentialKind> = Vec::with_capacity(kinds.len());
        for (file, text) in kinds {
            let kind: CredentialKind = parse(file, text, "credential kind")?;
            check::credential_kind(file, &kind)?;
            if parsed_kinds.iter().any(|k| k.id == kind.id) {
                return Err(check::error(
                    file,
                    "/id",
                    format!("duplicate credential kind id `{}`", kind.id),
                ));
            }
            parsed_kinds.push(kind);
        }
        parsed_kinds.sort_by(|a, b| a.id.cmp(&b.id));
        let kinds_by_id: BTreeMap<&str, &CredentialKind> =
            parsed_kinds.iter().map(|k| (k.id.as_str(), k)).collect();

        let mut types: Vec<ConnectorType> = Vec::with_capacity(connectors.len());
        for (file, text) in connectors {
            let ty: ConnectorType = parse(file, text, "connector type")?;
            check::connector_type(file, &ty, &kinds_by_id)?;
            if types.iter().any(|t| t.id == ty.id) {
                return Err(check::error(
                    file,
                    "/id",
                    format!("duplicate connector type id `{}`", ty.id),
                ));
            }
            types.push(ty);
        }
        let position = |c: &str| {
            CATEGORIES
                .iter()
                .position(|x| *x == c)
                .unwrap_or(usize::MAX)
        };
        types.sort_by(|a, b| {
            (position(&a.category), a.name.to_lowercase(), &a.id).cmp(&(
                position(&b.category),
                b.name.to_lowercase(),
                &b.id,
            ))
        });
        Ok(Catalog {
            types,
            kinds: parsed_kinds,
        })
    }

    /// Every connector type, in catalog order.
    pub fn types(&self) -> &[ConnectorType] {
        &self.types
    }

    pub fn get(&self, id: &str) -> Option<&ConnectorType> {
        self.types.iter().find(|t| t.id == id)
    }

    /// Every credential kind, sorted by id.
    pub fn credential_kinds(&self) -> &[CredentialKind] {
        &self.kinds
    }

    pub fn credential_kind(&self, id: &str) -> Option<&CredentialKind> {
        self.kinds.iter().find(|k| k.id == id)
    }
}

fn parse<T: DeserializeOwned>(file: &str, text: &str, what: &str) -> Result<T, CatalogError> {
    serde_json::from_str(text).map_err(|e| CatalogError {
        file: file.to_owned(),
        message: format!("not a valid {what}: {e}"),
    })
}
