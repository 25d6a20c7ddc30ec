//! Reading an import document from a file, where the file is: YAML (or JSON, which is
//! YAML) → JSON; `${VAR}` and `${file:PATH}` interpolated inside secret values only
//! (`credentials[*].secrets`, `connections[*].secrets`) from the reader's environment — the
//! CLI's for `patchbay import`, the server's for `serve --provision`; values sealed to a
//! passphrase opened with it. Errors name the document pointer and the variable or file,
//! never a value.
//!
//! Settings are not interpolated: they are shown to every reader of the connection, and a
//! `${…}` there stays literal rather than copying an environment value into plain view.
//! `$${` writes a literal `${`.

use std::path::Path;

use patchbay_crypto::{KdfParams, PassphraseKey, SecretString, PASSPHRASE_ALGORITHM};
use serde_json::{Map, Value};

use crate::service::provision::export::place;

/// YAML (1.2, JSON included) → a JSON object.
pub fn parse_yaml(text: &str) -> Result<Map<String, Value>, String> {
    let v: Value = serde_norway::from_str(text).map_err(|e| {
        // The location, not the message: serde's messages may quote the input.
        match e.location() {
            Some(l) => format!(
                "not a valid YAML document (line {}, column {})",
                l.line(),
                l.column()
            ),
            None => "not a valid YAML document".to_owned(),
        }
    })?;
    match v {
        Value::Object(m) => Ok(m),
        _ => Err("the document must be a mapping (apiVersion, credentials, connections)".into()),
    }
}

/// A JSON document as YAML.
pub fn to_yaml(doc: &Value) -> String {
    serde_norway::to_string(doc).expect("JSON values serialize as YAML")
}

/// Where the secrets of a document are: (section, entry name, field, value).
fn for_each_secret(
    doc: &mut Map<String, Value>,
    mut f: impl FnMut(&str, &str, &str, &str, &mut Value) -> Result<(), String>,
) -> Result<(), String> {
    for section in ["credentials", "connections"] {
        let Some(Value::Array(items)) = doc.get_mut(section) else {
            continue;
        };
        for (i, item) in items.iter_mut().enumerate() {
            let Some(obj) = item.as_object_mut() else {
                continue;
            };
            let name = obj
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let Some(Value::Object(secrets)) = obj.get_mut("secrets") else {
                continue;
            };
            for (field, v) in secrets.iter_mut() {
                let pointer = format!(
                    "/{section}/{i}/secrets/{}",
                    patchbay_core::validate::pointer_segment(field)
                );
                f(section, &name, field, &pointer, v)?;
            }
        }
    }
    Ok(())
}

/// Replaces `${VAR}` and `${file:PATH}` inside secret values. `env` looks a variable up;
/// relative paths are taken from `base_dir` (the document's directory).
pub fn interpolate(
    doc: &mut Map<String, Value>,
    env: &dyn Fn(&str) -> Option<String>,
    base_dir: &Path,
) -> Result<(), String> {
    for_each_secret(doc, |_, _, _, pointer, v| {
        let Value::String(s) = v else {
            return Ok(());
        };
        if !s.contains('$') {
            return Ok(());
        }
        let mut out = String::with_capacity(s.len());
        let mut rest = s.as_str();
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            rest = &rest[i..];
            if let Some(after) = rest.strip_prefix("$${") {
                out.push_str("${");
                rest = after;
            } else if let Some(after) = rest.strip_prefix("${") {
                let end = after
                    .find('}')
                    .ok_or_else(|| format!("{pointer}: `${{` without a closing `}}`"))?;
                let expr = &after[..end];
                rest = &after[end + 1..];
                if let Some(path) = expr.strip_prefix("file:") {
                    let full = base_dir.join(path);
                    let text = std::fs::read_to_string(&full).map_err(|e| {
                        format!("{pointer}: cannot read ${{file:{path}}}: {}", e.kind())
                    })?;
                    out.push_str(text.trim_end_matches(['\n', '\r']));
                } else {
                    let valid = !expr.is_empty()
                        && expr.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                    if !valid {
                        return Err(format!(
                            "{pointer}: `${{…}}` must name an environment variable ([A-Za-z0-9_]) or file:PATH"
                        ));
                    }
                    let value = env(expr).ok_or_else(|| {
                        format!("{pointer}: environment variable {expr} is not set")
                    })?;
                    out.push_str(&value);
                }
            } else {
                out.push('$');
                rest = &rest[1..];
            }
        }
        out.push_str(rest);
        *s = out;
        Ok(())
    })
}

/// Opens the values sealed to a passphrase and drops the `encryption` header. A document
/// without the header is returned as it is.
pub fn open_sealed(
    doc: &mut Map<String, Value>,
    passphrase: Option<&SecretString>,
) -> Result<(), String> {
    let Some(header) = doc.remove("encryption") else {
        return Ok(());
    };
    let pass = passphrase.ok_or(
        "the file holds secrets sealed to a passphrase: give it with --passphrase-file or PATCHBAY_EXPORT_PASSPHRASE",
    )?;
    let h = header.as_object().ok_or("/encryption: must be an object")?;
    if h.get("algorithm").and_then(Value::as_str) != Some(PASSPHRASE_ALGORITHM) {
        return Err(format!(
            "/encryption/algorithm: only {PASSPHRASE_ALGORITHM} is supported"
        ));
    }
    let num = |k: &str| h.get(k).and_then(Value::as_u64).unwrap_or(0);
    let params = KdfParams::from_header(
        num("memory_kib"),
        num("iterations"),
        num("parallelism"),
        h.get("salt").and_then(Value::as_str).unwrap_or(""),
    )
    .map_err(|e| format!("/encryption: {e}"))?;
    let key = PassphraseKey::derive(pass, &params).map_err(|e| format!("/encryption: {e}"))?;
    for_each_secret(doc, |section, name, field, pointer, v| {
        if let Value::String(s) = v {
            if patchbay_crypto::is_sealed(s) {
                let opened = key
                    .open(s, &place(section, name, field))
                    .map_err(|e| format!("{pointer}: {e}"))?;
                *s = opened.expose_secret().to_owned();
            }
        }
        Ok(())
    })
}

/// A document file made ready for `service::provision::apply`.
pub fn read(
    text: &str,
    base_dir: &Path,
    passphrase: Option<&SecretString>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Map<String, Value>, String> {
    let mut doc = parse_yaml(text)?;
    open_sealed(&mut doc, passphrase)?;
    interpolate(&mut doc, env, base_dir)?;
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_interpolate_from_the_environment_and_files_settings_do_not() {
        let dir = tempfile_dir();
        std::fs::write(dir.join("pw.txt"), "from-file\n").unwrap();
        let text = r#"
apiVersion: 1
connections:
  - name: a
    type: postgresql
    settings: {host: "${HOST}"}
    secrets: {password: "x-${PW}-${file:pw.txt}-$${LITERAL}"}
"#;
        let env = |k: &str| (k == "PW").then(|| "from-env".to_owned());
        let doc = read(text, &dir, None, &env).unwrap();
        assert_eq!(
            doc["connections"][0]["secrets"]["password"],
            "x-from-env-from-file-${LITERAL}"
        );
        assert_eq!(doc["connections"][0]["settings"]["host"], "${HOST}");
        let missing = read(&text.replace("${PW}", "${NOPE}"), &dir, None, &env).unwrap_err();
        assert_eq!(
            missing,
            "/connections/0/secrets/password: environment variable NOPE is not set"
        );
        let nofile = read(&text.replace("pw.txt", "absent.txt"), &dir, None, &env).unwrap_err();
        assert!(
            nofile.starts_with("/connections/0/secrets/password: cannot read"),
            "{nofile}"
        );
        assert!(parse_yaml("- a\n- b").is_err());
        assert!(parse_yaml("a: [").unwrap_err().contains("line"));
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("pb-doc-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
