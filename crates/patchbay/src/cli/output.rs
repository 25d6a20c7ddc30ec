//! Rendering API answers as tables, JSON or YAML.

use serde_json::Value;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

/// Prints `value`; for tables, `columns` are (header, JSON pointer) over `rows`.
pub fn print(format: Format, value: &Value, rows: Option<&[Value]>, columns: &[(&str, &str)]) {
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        ),
        Format::Yaml => print!("{}", to_yaml(value)),
        Format::Table => match rows {
            Some(rows) => print!("{}", table(rows, columns)),
            None => print!("{}", to_yaml(value)),
        },
    }
}

fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| cell(Some(x)))
            .collect::<Vec<_>>()
            .join(","),
        Some(other) => other.to_string(),
    }
}

pub fn table(rows: &[Value], columns: &[(&str, &str)]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| columns.iter().map(|(_, p)| cell(r.pointer(p))).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (h, _))| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([h.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |vals: Vec<String>| {
        let mut s = vals
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        s.truncate(s.trim_end().len());
        s + "\n"
    };
    let mut out = line(columns.iter().map(|(h, _)| h.to_string()).collect());
    for r in cells {
        out += &line(r);
    }
    out
}

/// YAML for JSON values (block style; strings quoted when YAML would misread them).
pub fn to_yaml(v: &Value) -> String {
    let mut out = String::new();
    yaml_into(&mut out, v, 0, false);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            let plain = !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./@".contains(c))
                && !matches!(
                    s.to_ascii_lowercase().as_str(),
                    "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "~"
                )
                && s.parse::<f64>().is_err()
                && !s.starts_with(['-', '.', '@']);
            if plain {
                s.clone()
            } else {
                serde_json::to_string(s).unwrap_or_default()
            }
        }
        Value::Array(a) if a.is_empty() => "[]".into(),
        Value::Object(o) if o.is_empty() => "{}".into(),
        _ => unreachable!("containers are handled by yaml_into"),
    }
}

fn yaml_into(out: &mut String, v: &Value, indent: usize, in_list: bool) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(o) if !o.is_empty() => {
            for (i, (k, val)) in o.iter().enumerate() {
                let key = scalar(&Value::String(k.clone()));
                let prefix = if in_list && i == 0 {
                    String::new()
                } else {
                    pad.clone()
                };
                match val {
                    Value::Object(m) if !m.is_empty() => {
                        out.push_str(&format!("{prefix}{key}:\n"));
                        yaml_into(out, val, indent + 2, false);
                    }
                    Value::Array(a) if !a.is_empty() => {
                        out.push_str(&format!("{prefix}{key}:\n"));
                        yaml_into(out, val, indent, false);
                    }
                    _ => out.push_str(&format!("{prefix}{key}: {}\n", scalar(val))),
                }
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for item in a {
                out.push_str(&format!("{pad}- "));
                match item {
                    Value::Object(m) if !m.is_empty() => yaml_into(out, item, indent + 2, true),
                    Value::Array(x) if !x.is_empty() => {
                        out.push('\n');
                        yaml_into(out, item, indent + 2, false)
                    }
                    _ => out.push_str(&format!("{}\n", scalar(item))),
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", scalar(other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn yaml_renders_nested_values_and_quotes_ambiguous_strings() {
        let v = json!({"name": "prod-pg", "port": 5432, "tags": ["a", "true"],
            "settings": {"host": "db.example.org", "empty": {}}, "items": [{"a": 1, "b": "x y"}]});
        assert_eq!(
            to_yaml(&v),
            "name: prod-pg\nport: 5432\ntags:\n- a\n- \"true\"\nsettings:\n  host: db.example.org\n  empty: {}\nitems:\n- a: 1\n  b: \"x y\"\n"
        );
    }

    #[test]
    fn tables_align_columns() {
        let rows = [
            json!({"n": "a", "t": "postgresql"}),
            json!({"n": "longer", "t": null}),
        ];
        assert_eq!(
            table(&rows, &[("NAME", "/n"), ("TYPE", "/t")]),
            "NAME    TYPE\na       postgresql\nlonger  -\n"
        );
    }
}
