//! The connector catalog: connector types and credential kinds, compiled in from the JSON
//! files under `catalog/`, parsed once and checked on load (see [`check`]).

mod check;

use std::sync::OnceLock;

use patchbay_core::schema::{ConnectorType, CredentialKind, CATEGORIES};

pub use check::PROBE_KINDS;

mod files {
    include!(concat!(env!("OUT_DIR"), "/catalog_files.rs"));
}

#[derive(Debug, Clone, PartialEq)]
pub struct CatalogError {
    pub file: String,
    pub message: String,
}

impl std::fmt::Display for CatalogError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "catalog file {}: {}", self.file, self.message)
    }
}

impl std::error::Error for CatalogError {}

pub struct Catalog {
    types: Vec<ConnectorType>,
    kinds: Vec<CredentialKind>,
}

impl Catalog {
    /// The compiled-in catalog. Its files are checked by this crate's tests, so a failure
    /// here is a build defect.
    pub fn builtin() -> &'static Catalog {
        static CATALOG: OnceLock<Catalog> = OnceLock::new();
        CATALOG.get_or_init(|| {
            Catalog::from_files(files::CONNECTOR_FILES, files::KIND_FILES)
                .unwrap_or_else(|e| panic!("built-in catalog is invalid: {e}"))
        })
    }

    pub fn from_files(
        connectors: &[(&str, &str)],
        kinds: &[(&str, &str)],
    ) -> Result<Catalog, CatalogError> {
        let err = |file: &str, message: String| CatalogError {
            file: file.to_owned(),
            message,
        };
        let mut parsed_kinds = Vec::new();
        for (file, text) in kinds {
            let k: CredentialKind =
                serde_json::from_str(text).map_err(|e| err(file, e.to_string()))?;
            check::kind(file, &k).map_err(|m| err(file, m))?;
            parsed_kinds.push(k);
        }
        let mut types: Vec<ConnectorType> = Vec::new();
        for (file, text) in connectors {
            let t: ConnectorType =
                serde_json::from_str(text).map_err(|e| err(file, e.to_string()))?;
            if types.iter().any(|x| x.id == t.id) {
                return Err(err(file, format!("duplicate id {}", t.id)));
            }
            check::connector(file, &t, &parsed_kinds).map_err(|m| err(file, m))?;
            types.push(t);
        }
        let rank = |c: &str| CATEGORIES.iter().position(|x| *x == c).unwrap_or(usize::MAX);
        types.sort_by(|a, b| (rank(&a.category), &a.name).cmp(&(rank(&b.category), &b.name)));
        parsed_kinds.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Catalog {
            types,
            kinds: parsed_kinds,
        })
    }

    pub fn types(&self) -> &[ConnectorType] {
        &self.types
    }

    pub fn get(&self, id: &str) -> Option<&ConnectorType> {
        self.types.iter().find(|t| t.id == id)
    }

    pub fn credential_kinds(&self) -> &[CredentialKind] {
        &self.kinds
    }

    pub fn credential_kind(&self, id: &str) -> Option<&CredentialKind> {
        self.kinds.iter().find(|k| k.id == id)
    }
}

#[cfg(test)]
mod tests;
