//! Forms generated from a connector type's settings schema (groups, order, defaults, enums
//! as selects, alternative auth modes as tabs, secrets as password inputs, help texts,
//! field errors), and the way back: posted fields → the JSON body the service takes.
//!
//! Form field names: `settings.<name>` and `secrets.<name>` for the schema's properties;
//! `name`, `description`, `environment`, `tags` (comma-separated) for the metadata. A secret
//! value is never written into a page: a secret input is always empty, and an empty secret
//! input keeps the stored value.

use std::collections::BTreeMap;

use patchbay_core::schema::{FieldSchema, FieldType, Format};
use serde_json::{Map, Value};

use super::page::Choice;

/// `application/x-www-form-urlencoded` pairs, decoded.
pub fn pairs(body: &[u8]) -> Vec<(String, String)> {
    serde_urlencoded_pairs(body)
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn serde_urlencoded_pairs(body: &[u8]) -> Vec<(String, String)> {
    let s = String::from_utf8_lossy(body);
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

/// The posted fields by name (the last value wins; checkboxes of one name are collected by
/// [`Posted::all`]).
pub struct Posted(pub Vec<(String, String)>);

impl Posted {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self, name: &str) -> String {
        self.get(name).unwrap_or("").trim().to_owned()
    }
    /// Every value of a repeated field (checkboxes of one name).
    pub fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// One input of a generated form.
pub struct FieldView {
    /// The form field name (`settings.host`).
    pub name: String,
    /// The element id (`f-settings-host`), for `<label for>`.
    pub id: String,
    pub label: String,
    /// text, number, password, select, checkbox, textarea.
    pub input: &'static str,
    pub value: String,
    pub checked: bool,
    pub options: Vec<Choice>,
    pub help: Option<String>,
    pub required: bool,
    pub error: Option<String>,
    /// CSS classes naming the auth modes (tabs) this field belongs to; empty: always shown.
    pub modes: String,
    /// A secret that has a stored value (the input stays empty and keeps it).
    pub secret_set: bool,
    pub autocomplete: &'static str,
}

pub struct GroupView {
    pub title: String,
    pub fields: Vec<FieldView>,
}

/// An alternative authentication mode, shown as a tab.
pub struct ModeView {
    pub index: usize,
    pub title: String,
    pub checked: bool,
}

pub struct SchemaForm {
    pub groups: Vec<GroupView>,
    pub modes: Vec<ModeView>,
}

fn group_title(g: &str) -> String {
    match g {
        "connection" => "Connection".into(),
        "authentication" => "Authentication".into(),
        "tls" => "TLS".into(),
        "advanced" => "Advanced".into(),
        "schema_registry" => "Schema registry".into(),
        other => {
            let mut t = other.replace('_', " ");
            if let Some(c) = t.get(0..1) {
                t.replace_range(0..1, &c.to_uppercase());
            }
            t
        }
    }
}

const GROUP_ORDER: &[&str] = &["connection", "authentication", "tls"];

fn group_rank(g: &str) -> usize {
    GROUP_ORDER
        .iter()
        .position(|x| *x == g)
        .unwrap_or(if g == "advanced" { 100 } else { 50 })
}

/// A settings value as the text of an input.
fn as_text(v: &Value, f: &FieldSchema) -> String {
    match (v, f.ty) {
        (Value::String(s), _) => s.clone(),
        (Value::Array(items), FieldType::Array) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join("\n"),
        (Value::Null, _) => String::new(),
        (v @ (Value::Object(_) | Value::Array(_)), _) => {
            serde_json::to_string_pretty(v).unwrap_or_default()
        }
        (v, _) => v.to_string(),
    }
}

/// What the form shows: current values (settings, never secrets), which secrets are set,
/// errors by JSON pointer, and the chosen auth mode.
pub struct FormState<'a> {
    pub values: &'a Map<String, Value>,
    pub secrets_set: &'a [String],
    pub errors: &'a BTreeMap<String, String>,
    pub mode: Option<usize>,
    /// A new connection: schema defaults fill empty inputs.
    pub defaults: bool,
}

pub fn build(schema: &patchbay_core::schema::SettingsSchema, st: &FormState<'_>) -> SchemaForm {
    let modes: Vec<ModeView> = schema
        .one_of
        .iter()
        .enumerate()
        .map(|(i, m)| ModeView {
            index: i,
            title: m.title.clone(),
            checked: st.mode.unwrap_or(0) == i,
        })
        .collect();
    let mut fields: Vec<(usize, i64, usize, String, FieldView)> = vec![];
    for (pos, (name, f)) in schema.properties.iter().enumerate() {
        let group = f.group.clone().unwrap_or_else(|| "connection".into());
        let section = if f.secret { "secrets" } else { "settings" };
        let form_name = format!("{section}.{name}");
        // A credential kind's fields all travel in `secrets`, so errors may name either.
        let error = st
            .errors
            .get(&format!("/{section}/{name}"))
            .or_else(|| st.errors.get(&format!("/settings/{name}")))
            .or_else(|| st.errors.get(&format!("/secrets/{name}")))
            .cloned();
        let in_modes: Vec<usize> = schema
            .one_of
            .iter()
            .enumerate()
            .filter(|(_, m)| m.required.iter().any(|r| r == name))
            .map(|(i, _)| i)
            .collect();
        let modes_css = in_modes
            .iter()
            .map(|i| format!("m{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        let current = st
            .values
            .get(name)
            .cloned()
            .or_else(|| st.defaults.then(|| f.default.clone()).flatten());
        let mut view = FieldView {
            name: form_name.clone(),
            id: format!("f-{section}-{name}"),
            label: f.title.clone(),
            input: "text",
            value: String::new(),
            checked: false,
            options: vec![],
            help: f.description.clone(),
            required: schema.required.iter().any(|r| r == name),
            error,
            modes: if modes_css.is_empty() {
                String::new()
            } else {
                format!("mode-field {modes_css}")
            },
            secret_set: f.secret && st.secrets_set.iter().any(|s| s == name),
            autocomplete: "off",
        };
        if f.secret {
            view.input = if matches!(f.format, Some(Format::Pem | Format::Multiline)) {
                "textarea"
            } else {
                "password"
            };
            view.autocomplete = "new-password";
        } else if let Some(options) = &f.enumeration {
            view.input = "select";
            let cur = current.as_ref().map(|v| as_text(v, f)).unwrap_or_default();
            if !view.required {
                view.options.push(Choice {
                    value: String::new(),
                    label: "—".into(),
                    selected: cur.is_empty(),
                });
            }
            for o in options {
                let t = as_text(o, f);
                view.options.push(Choice {
                    selected: t == cur,
                    label: t.clone(),
                    value: t,
                });
            }
        } else {
            match f.ty {
                FieldType::Boolean => {
                    view.input = "checkbox";
                    view.checked = current.as_ref().and_then(Value::as_bool) == Some(true);
                }
                FieldType::Integer | FieldType::Number => {
                    view.input = "number";
                    view.value = current.as_ref().map(|v| as_text(v, f)).unwrap_or_default();
                }
                FieldType::Object | FieldType::Array => {
                    view.input = "textarea";
                    view.value = current.as_ref().map(|v| as_text(v, f)).unwrap_or_default();
                    let how = if f.ty == FieldType::Array
                        && f.items.as_ref().is_none_or(|i| i.ty == FieldType::String)
                    {
                        "One value per line."
                    } else {
                        "JSON."
                    };
                    view.help = Some(match view.help.take() {
                        Some(h) => format!("{h} {how}"),
                        None => how.into(),
                    });
                }
                FieldType::String => {
                    if matches!(f.format, Some(Format::Pem | Format::Multiline)) {
                        view.input = "textarea";
                    }
                    view.value = current.as_ref().map(|v| as_text(v, f)).unwrap_or_default();
                }
            }
        }
        fields.push((
            group_rank(&group),
            f.order.unwrap_or(i64::MAX),
            pos,
            group,
            view,
        ));
    }
    fields.sort_by(|a, b| (a.0, &a.3, a.1, a.2).cmp(&(b.0, &b.3, b.1, b.2)));
    let mut groups: Vec<GroupView> = vec![];
    let mut last_group = String::new();
    for (_, _, _, group, view) in fields {
        if group != last_group || groups.is_empty() {
            groups.push(GroupView {
                title: group_title(&group),
                fields: vec![],
            });
            last_group = group;
        }
        groups.last_mut().expect("pushed above").fields.push(view);
    }
    SchemaForm { groups, modes }
}

/// The settings and secrets of a posted form, typed by the schema. Errors name the field by
/// JSON pointer, like the API's. Empty inputs are left out (an empty secret keeps its value).
pub fn settings_from(
    schema: &patchbay_core::schema::SettingsSchema,
    posted: &Posted,
) -> (
    Map<String, Value>,
    Map<String, Value>,
    BTreeMap<String, String>,
) {
    let mut settings = Map::new();
    let mut secrets = Map::new();
    let mut errors = BTreeMap::new();
    for (name, f) in schema.properties.iter() {
        if f.secret {
            if let Some(v) = posted.get(&format!("secrets.{name}")) {
                if !v.is_empty() {
                    secrets.insert(name.clone(), Value::String(v.to_owned()));
                }
            }
            continue;
        }
        let key = format!("settings.{name}");
        let raw = posted.get(&key).map(str::trim).unwrap_or("");
        let pointer = format!("/settings/{name}");
        let value = match f.ty {
            FieldType::Boolean => {
                let on = !raw.is_empty();
                let default_on = f.default.as_ref().and_then(Value::as_bool) == Some(true);
                if on || default_on {
                    Some(Value::Bool(on))
                } else {
                    None
                }
            }
            _ if raw.is_empty() => None,
            _ if f.enumeration.is_some() && f.ty == FieldType::String => {
                Some(Value::String(raw.to_owned()))
            }
            FieldType::Integer => match raw.parse::<i64>() {
                Ok(n) => Some(Value::from(n)),
                Err(_) => {
                    errors.insert(pointer, "must be a whole number".into());
                    None
                }
            },
            FieldType::Number => match raw.parse::<f64>() {
                Ok(n) => Some(Value::from(n)),
                Err(_) => {
                    errors.insert(pointer, "must be a number".into());
                    None
                }
            },
            FieldType::Array if f.items.as_ref().is_none_or(|i| i.ty == FieldType::String) => {
                Some(Value::Array(
                    raw.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(|l| Value::String(l.to_owned()))
                        .collect(),
                ))
            }
            FieldType::Object | FieldType::Array => match serde_json::from_str::<Value>(raw) {
                Ok(v) => Some(v),
                Err(_) => {
                    errors.insert(pointer, "must be valid JSON".into());
                    None
                }
            },
            // Single-line text is trimmed (a pasted host with a trailing space); PEM and
            // multi-line text keep their lines.
            FieldType::String if matches!(f.format, Some(Format::Pem | Format::Multiline)) => Some(
                Value::String(posted.get(&key).unwrap_or("").replace("\r\n", "\n")),
            ),
            FieldType::String => Some(Value::String(raw.to_owned())),
        };
        if let Some(v) = value {
            settings.insert(name.clone(), v);
        }
    }
    (settings, secrets, errors)
}

/// The metadata fields of a connection form as body members.
pub fn metadata_from(posted: &Posted, body: &mut Map<String, Value>) {
    body.insert("name".into(), Value::String(posted.text("name")));
    let description = posted.text("description");
    if !description.is_empty() {
        body.insert("description".into(), Value::String(description));
    }
    let environment = posted.text("environment");
    if !environment.is_empty() {
        body.insert("environment".into(), Value::String(environment));
    }
    let tags: Vec<Value> = posted
        .text("tags")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| Value::String(t.to_owned()))
        .collect();
    body.insert("tags".into(), Value::Array(tags));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_encoded_pairs_decode_plus_and_percent() {
        let p = pairs(b"a=1+2&b=%3Cx%3E&c&d=%zz&e=%4");
        assert_eq!(p[0], ("a".into(), "1 2".into()));
        assert_eq!(p[1], ("b".into(), "<x>".into()));
        assert_eq!(p[2], ("c".into(), String::new()));
        assert_eq!(p[3].1, "%zz");
        assert_eq!(p[4].1, "%4");
    }

    fn schema(id: &str) -> &'static patchbay_core::schema::SettingsSchema {
        &patchbay_catalog::Catalog::builtin()
            .get(id)
            .expect("in the catalog")
            .settings
    }

    fn posted(fields: &[(&str, &str)]) -> Posted {
        Posted(
            fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn a_form_is_grouped_in_schema_order_with_defaults_selects_and_empty_secrets() {
        let values = Map::new();
        let errors = BTreeMap::from([("/settings/port".to_owned(), "bad".to_owned())]);
        let secrets_set = vec!["password".to_owned()];
        let f = build(
            schema("postgresql"),
            &FormState {
                values: &values,
                secrets_set: &secrets_set,
                errors: &errors,
                mode: None,
                defaults: true,
            },
        );
        let titles: Vec<&str> = f.groups.iter().map(|g| g.title.as_str()).collect();
        assert_eq!(titles, ["Connection", "Authentication", "TLS", "Advanced"]);
        let names: Vec<&str> = f.groups[0].fields.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(
            names,
            ["settings.host", "settings.port", "settings.database"]
        );
        let port = &f.groups[0].fields[1];
        assert_eq!((port.input, port.value.as_str()), ("number", "5432"));
        assert_eq!(port.error.as_deref(), Some("bad"));
        assert!(f.groups[0].fields[0].required);
        let password = &f.groups[1].fields[1];
        assert_eq!((password.input, password.value.as_str()), ("password", ""));
        assert!(password.secret_set);
        let sslmode = &f.groups[2].fields[0];
        assert_eq!(sslmode.input, "select");
        assert!(sslmode
            .options
            .iter()
            .any(|o| o.value == "prefer" && o.selected));
        assert!(f.modes.is_empty());
    }

    #[test]
    fn auth_modes_become_tabs_and_their_fields_carry_the_mode_classes() {
        let values = Map::new();
        let f = build(
            schema("s3"),
            &FormState {
                values: &values,
                secrets_set: &[],
                errors: &BTreeMap::new(),
                mode: Some(1),
                defaults: true,
            },
        );
        assert_eq!(f.modes.len(), 3);
        assert!(f.modes[1].checked && !f.modes[0].checked);
        let all: Vec<&FieldView> = f.groups.iter().flat_map(|g| g.fields.iter()).collect();
        let role = all.iter().find(|x| x.name == "settings.role_arn").unwrap();
        assert_eq!(role.modes, "mode-field m1");
        let bucket = all.iter().find(|x| x.name == "settings.bucket").unwrap();
        assert_eq!(bucket.modes, "");
    }

    #[test]
    fn posted_fields_are_typed_by_the_schema_and_bad_ones_named_by_pointer() {
        let (settings, secrets, errors) = settings_from(
            schema("postgresql"),
            &posted(&[
                ("settings.host", " db "),
                ("settings.port", "6543"),
                ("settings.database", ""),
                ("secrets.password", "pw"),
            ]),
        );
        assert_eq!(settings["host"], "db");
        assert_eq!(settings["port"], 6543);
        assert!(
            !settings.contains_key("database"),
            "empty inputs are left out"
        );
        assert_eq!(secrets["password"], "pw");
        assert!(errors.is_empty());
        let (_, secrets, errors) = settings_from(
            schema("postgresql"),
            &posted(&[("settings.port", "x"), ("secrets.password", "")]),
        );
        assert_eq!(errors["/settings/port"], "must be a whole number");
        assert!(secrets.is_empty(), "an empty secret keeps the stored value");
        let (settings, _, _) = settings_from(
            schema("kafka"),
            &posted(&[("settings.bootstrap_servers", "a:9092\r\n\n b:9092 ")]),
        );
        assert_eq!(
            settings["bootstrap_servers"],
            serde_json::json!(["a:9092", "b:9092"])
        );
    }
}
