//! `patchbay export` and `patchbay import`: documents (YAML, apiVersion 1) and Airflow
//! connections (URIs, `airflow connections export` JSON). Files are read and written here,
//! on the client: `${VAR}`/`${file:PATH}` take the client's environment, sealed secrets
//! open with the client's passphrase; the server applies the document
//! (`POST /api/v1/projects/{project}/import`). docs/import-export.md has the details.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use clap::ValueEnum;
use patchbay_core::airflow;
use patchbay_crypto::SecretString;
use patchbay_server::document_file;
use reqwest::Method;
use serde_json::{json, Map, Value};

use super::client::{enc, ApiFailure};
use super::connections::usage_error;
use super::{output, Ctx};

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum ExportFormat {
    Yaml,
    Json,
    AirflowJson,
    AirflowUri,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum ImportFormat {
    Auto,
    Yaml,
    AirflowJson,
    AirflowUri,
}

#[derive(clap::Args)]
pub struct ExportArgs {
    /// yaml (the import document), json (the same as JSON), airflow-json (as `airflow
    /// connections export`), airflow-uri (AIRFLOW_CONN_<ID>=<uri> lines).
    #[arg(long, value_enum, default_value = "yaml")]
    pub format: ExportFormat,
    /// Include secret values: sealed to the passphrase (yaml, json), or in plain text
    /// (airflow formats: Airflow has no sealed form). Needs credentials:write and
    /// connections:reveal; every exported secret is audited.
    #[arg(long)]
    pub include_secrets: bool,
    /// File holding the passphrase (default: PATCHBAY_EXPORT_PASSPHRASE).
    #[arg(long, requires = "include_secrets")]
    pub passphrase_file: Option<PathBuf>,
    /// Write here instead of standard output.
    #[arg(long = "out", short = 'O')]
    pub out: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct ImportArgs {
    /// The file (`-`: standard input).
    pub file: PathBuf,
    /// Delete the project's connections the file does not name.
    #[arg(long)]
    pub prune: bool,
    /// Print the diff; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// auto: airflow-json for a JSON object of connections with conn_type, airflow-uri for
    /// AIRFLOW_CONN_<ID>=<uri> lines, else yaml.
    #[arg(long, value_enum, default_value = "auto")]
    pub format: ImportFormat,
    /// File holding the passphrase of sealed secrets (default: PATCHBAY_EXPORT_PASSPHRASE).
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,
}

fn passphrase(file: Option<&Path>) -> Result<Option<SecretString>, ApiFailure> {
    if let Some(f) = file {
        let text = std::fs::read_to_string(f)
            .map_err(|e| usage_error(format!("--passphrase-file {}: {e}", f.display())))?;
        return Ok(Some(SecretString::new(
            text.trim_end_matches(['\n', '\r']).to_owned(),
        )));
    }
    Ok(std::env::var("PATCHBAY_EXPORT_PASSPHRASE")
        .ok()
        .map(SecretString::new))
}

fn invalid(message: String) -> ApiFailure {
    ApiFailure {
        code: "invalid_document".into(),
        message,
        field: None,
    }
}

pub async fn export(args: ExportArgs, ctx: Ctx) -> Result<(), ApiFailure> {
    let project = ctx.project_id().await?;
    let path = format!("/api/v1/projects/{}/export", enc(&project));
    let pass = if args.include_secrets {
        Some(passphrase(args.passphrase_file.as_deref())?.ok_or_else(|| {
            usage_error(
                "--include-secrets needs a passphrase: --passphrase-file or PATCHBAY_EXPORT_PASSPHRASE"
                    .into(),
            )
        })?)
    } else {
        None
    };
    let doc = match &pass {
        None => ctx.client.get(&path).await?,
        Some(p) => {
            let body = json!({"passphrase": p.expose_secret()});
            ctx.client
                .call(Method::POST, &path, Some(&body), &[])
                .await?
                .body
        }
    };
    let text = match args.format {
        ExportFormat::Yaml => document_file::to_yaml(&doc),
        ExportFormat::Json => serde_json::to_string_pretty(&doc).expect("JSON serializes") + "\n",
        ExportFormat::AirflowJson | ExportFormat::AirflowUri => {
            let mut doc = doc.as_object().cloned().unwrap_or_default();
            if args.include_secrets {
                eprintln!("warning: the Airflow output holds secrets in plain text");
                document_file::open_sealed(&mut doc, pass.as_ref()).map_err(invalid)?;
            }
            let conns = to_airflow(&ctx, &doc).await?;
            if args.format == ExportFormat::AirflowJson {
                serde_json::to_string_pretty(&airflow::to_export_json(&conns))
                    .expect("JSON serializes")
                    + "\n"
            } else {
                conns
                    .iter()
                    .map(|(id, c)| {
                        let var: String = id
                            .to_uppercase()
                            .chars()
                            .map(|ch| if ch.is_ascii_alphanumeric() { ch } else { '_' })
                            .collect();
                        format!("AIRFLOW_CONN_{var}='{}'\n", airflow::to_uri(c))
                    })
                    .collect()
            }
        }
    };
    match args.out {
        None => {
            print!("{text}");
            Ok(())
        }
        Some(path) => write_private(&path, &text, args.include_secrets),
    }
}

/// Writes an export file; one with secrets is created readable by its owner only.
fn write_private(path: &Path, text: &str, secret: bool) -> Result<(), ApiFailure> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let _ = secret;
    let mut f = opts
        .open(path)
        .map_err(|e| usage_error(format!("{}: {e}", path.display())))?;
    f.write_all(text.as_bytes())
        .map_err(|e| usage_error(format!("{}: {e}", path.display())))
}

/// The type's settings schema properties (for which extras are settings and which fields
/// are secret), fetched once per type.
async fn type_props(
    ctx: &Ctx,
    cache: &mut BTreeMap<String, Map<String, Value>>,
    type_id: &str,
) -> Result<Map<String, Value>, ApiFailure> {
    if let Some(p) = cache.get(type_id) {
        return Ok(p.clone());
    }
    let t = ctx
        .client
        .get(&format!("/api/v1/connection-types/{}", enc(type_id)))
        .await?;
    let mut props = t
        .pointer("/settings/properties")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for f in t["secret_fields"].as_array().into_iter().flatten() {
        if let Some(Value::Object(p)) = f.as_str().and_then(|f| props.get_mut(f)) {
            p.insert("secret".into(), Value::Bool(true));
        }
    }
    cache.insert(type_id.to_owned(), props.clone());
    Ok(props)
}

/// Document connections as Airflow connections. A shared credential's values fill the
/// connection's fields of the same name (Airflow has no shared credentials).
async fn to_airflow(
    ctx: &Ctx,
    doc: &Map<String, Value>,
) -> Result<Vec<(String, airflow::AirflowConn)>, ApiFailure> {
    let creds: BTreeMap<&str, &Value> = doc
        .get("credentials")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("name").and_then(Value::as_str).map(|n| (n, c)))
        .collect();
    let mut cache = BTreeMap::new();
    let mut out = Vec::new();
    for c in doc
        .get("connections")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = c["name"].as_str().unwrap_or_default().to_owned();
        let type_id = c["type"].as_str().unwrap_or_default();
        let mut settings = c["settings"].as_object().cloned().unwrap_or_default();
        let mut secrets = c["secrets"].as_object().cloned().unwrap_or_default();
        if let Some(cred) = c
            .pointer("/credential/name")
            .and_then(Value::as_str)
            .and_then(|n| creds.get(n))
        {
            let props = type_props(ctx, &mut cache, type_id).await?;
            for (k, v) in cred["fields"].as_object().into_iter().flatten() {
                if props.contains_key(k) {
                    settings.entry(k.clone()).or_insert(v.clone());
                }
            }
            for (k, v) in cred["secrets"].as_object().into_iter().flatten() {
                if props.contains_key(k) {
                    secrets.entry(k.clone()).or_insert(v.clone());
                }
            }
        }
        let description = c["description"].as_str().unwrap_or_default();
        out.push((
            name,
            airflow::export(type_id, &settings, &secrets, description),
        ));
    }
    Ok(out)
}

fn read_input(file: &Path) -> Result<String, ApiFailure> {
    if file == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| usage_error(format!("reading standard input: {e}")))?;
        Ok(s)
    } else {
        std::fs::read_to_string(file).map_err(|e| usage_error(format!("{}: {e}", file.display())))
    }
}

fn detect(text: &str) -> ImportFormat {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') {
        if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(text) {
            if !m.contains_key("apiVersion")
                && m.values().all(|v| v.get("conn_type").is_some())
                && !m.is_empty()
            {
                return ImportFormat::AirflowJson;
            }
        }
    }
    let first = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or("");
    if first
        .trim_start_matches("export ")
        .starts_with("AIRFLOW_CONN_")
    {
        return ImportFormat::AirflowUri;
    }
    ImportFormat::Yaml
}

/// `AIRFLOW_CONN_<ID>=<uri>` lines (an env file; `export ` and quotes allowed).
fn parse_uri_lines(text: &str) -> Result<Vec<(String, airflow::AirflowConn)>, ApiFailure> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (var, value) = line
            .split_once('=')
            .ok_or_else(|| invalid(format!("line {}: expected AIRFLOW_CONN_<ID>=<uri>", i + 1)))?;
        let id = airflow::conn_id_of_env_var(var.trim()).ok_or_else(|| {
            invalid(format!(
                "line {}: the variable must start with AIRFLOW_CONN_",
                i + 1
            ))
        })?;
        let value = value.trim();
        let value = value
            .strip_prefix('\'')
            .and_then(|v| v.strip_suffix('\''))
            .or_else(|| value.strip_prefix('"').and_then(|v| v.strip_suffix('"')))
            .unwrap_or(value);
        let conn = if value.trim_start().starts_with('{') {
            // Airflow also accepts the JSON form in the variable.
            let v: Value = serde_json::from_str(value)
                .map_err(|_| invalid(format!("line {}: the JSON value does not parse", i + 1)))?;
            airflow::from_export_json(&json!({ id.clone(): v }))
                .map_err(|e| invalid(format!("line {}: {e}", i + 1)))?
                .remove(0)
                .1
        } else {
            airflow::parse_uri(value).map_err(|e| invalid(format!("line {}: {e}", i + 1)))?
        };
        out.push((id, conn));
    }
    Ok(out)
}

/// Airflow connections as an import document; conn types without a patchbay type and
/// extras that are no setting of the type are skipped with a warning.
async fn from_airflow(
    ctx: &Ctx,
    conns: Vec<(String, airflow::AirflowConn)>,
) -> Result<Map<String, Value>, ApiFailure> {
    let mut cache = BTreeMap::new();
    let mut entries = Vec::new();
    for (id, c) in conns {
        let Some(name) = airflow::name_for_conn_id(&id) else {
            eprintln!("warning: {id}: no usable name; skipped");
            continue;
        };
        let Some(imp) = airflow::import(&c) else {
            eprintln!(
                "warning: {id}: Airflow conn_type {} has no patchbay type (docs/import-export.md lists them); skipped",
                c.conn_type
            );
            continue;
        };
        let props = type_props(ctx, &mut cache, &imp.type_id).await?;
        let mut settings = imp.settings;
        let mut secrets = imp.secrets;
        for (k, v) in imp.unmapped {
            match props.get(&k) {
                Some(p) if p["secret"] == true => {
                    let s = match v {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    secrets.insert(k, Value::String(s));
                }
                Some(_) => {
                    settings.insert(k, v);
                }
                None => eprintln!(
                    "warning: {id}: extra {k} is no setting of {}; dropped",
                    imp.type_id
                ),
            }
        }
        let mut e = Map::new();
        e.insert("name".into(), json!(name));
        e.insert("type".into(), json!(imp.type_id));
        if let Some(d) = c.description.filter(|d| !d.is_empty()) {
            e.insert("description".into(), json!(d));
        }
        e.insert("settings".into(), Value::Object(settings));
        if !secrets.is_empty() {
            e.insert("secrets".into(), Value::Object(secrets));
        }
        entries.push(Value::Object(e));
    }
    let mut doc = Map::new();
    doc.insert("apiVersion".into(), json!(1));
    doc.insert("connections".into(), Value::Array(entries));
    Ok(doc)
}

pub async fn import(args: ImportArgs, ctx: Ctx) -> Result<(), ApiFailure> {
    let text = read_input(&args.file)?;
    let format = match args.format {
        ImportFormat::Auto => detect(&text),
        f => f,
    };
    let doc = match format {
        ImportFormat::Yaml | ImportFormat::Auto => {
            let base = match args.file.parent() {
                Some(p) if args.file != Path::new("-") && !p.as_os_str().is_empty() => {
                    p.to_path_buf()
                }
                _ => PathBuf::from("."),
            };
            let pass = passphrase(args.passphrase_file.as_deref())?;
            let env = |k: &str| std::env::var(k).ok();
            document_file::read(&text, &base, pass.as_ref(), &env).map_err(invalid)?
        }
        ImportFormat::AirflowJson => {
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| invalid(format!("not JSON (line {})", e.line())))?;
            let conns = airflow::from_export_json(&v).map_err(|e| invalid(e.to_string()))?;
            from_airflow(&ctx, conns).await?
        }
        ImportFormat::AirflowUri => from_airflow(&ctx, parse_uri_lines(&text)?).await?,
    };
    let project = ctx.project_id().await?;
    if let Some(named) = doc.get("project").and_then(Value::as_str) {
        if named != ctx.g.project && named != project {
            eprintln!(
                "note: the file names project {named}; importing into {} (--project)",
                ctx.g.project
            );
        }
    }
    let mut qs = Vec::new();
    if args.dry_run {
        qs.push("dry_run=true");
    }
    if args.prune {
        qs.push("prune=true");
    }
    let path = format!(
        "/api/v1/projects/{}/import{}{}",
        enc(&project),
        if qs.is_empty() { "" } else { "?" },
        qs.join("&")
    );
    let report = ctx
        .client
        .call(Method::POST, &path, Some(&Value::Object(doc)), &[])
        .await?
        .body;
    let rows = report["changes"].as_array().cloned().unwrap_or_default();
    output::print(
        ctx.g.output,
        &report,
        Some(&rows),
        &[
            ("ACTION", "/action"),
            ("KIND", "/kind"),
            ("NAME", "/name"),
            ("CHANGES", "/changes"),
        ],
    );
    if matches!(ctx.g.output, output::Format::Table) {
        let summary: Vec<String> = report["summary"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{v} {k}"))
            .collect();
        println!(
            "{}{}",
            if args.dry_run { "dry run: " } else { "" },
            if summary.is_empty() {
                "nothing to do".to_owned()
            } else {
                summary.join(", ")
            }
        );
    }
    Ok(())
}
