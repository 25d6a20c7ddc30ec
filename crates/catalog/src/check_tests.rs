//! Negative tests: each semantic check of `check` rejects a bad definition, naming the file
//! and the property path.

use serde_json::{json, Value};

use crate::{Catalog, CatalogError};

fn minimal() -> Value {
    json!({
        "id": "thing", "name": "Thing", "category": "databases", "genericity": "generic",
        "description": "A thing.", "capabilities": ["source"], "credential_kinds": ["username_password"],
        "probe": {"kind": "tcp"}, "docs_url": "https://example.com/docs",
        "settings": {"type": "object", "required": ["host"], "properties": {
            "host": {"type": "string", "title": "Host", "format": "hostname"},
            "port": {"type": "integer", "title": "Port", "default": 5432, "minimum": 1, "maximum": 65535},
            "password": {"type": "string", "title": "Password", "secret": true}
        }}
    })
}

fn kind_file() -> (String, String) {
    let k = json!({"id": "username_password", "name": "User", "description": "d",
        "fields": {"username": {"type": "string", "title": "U"}, "password": {"type": "string", "title": "P", "secret": true}},
        "required": ["username", "password"]});
    ("username_password.json".into(), k.to_string())
}

fn load(types: &[Value]) -> Result<Catalog, CatalogError> {
    let files: Vec<(String, String)> = types
        .iter()
        .map(|t| {
            (
                format!("{}.json", t["id"].as_str().unwrap_or("x")),
                t.to_string(),
            )
        })
        .collect();
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let (kn, kt) = kind_file();
    Catalog::from_files(&refs, &[(kn.as_str(), kt.as_str())])
}

/// Loads `minimal()` with `edit` applied and expects an error mentioning every fragment.
fn rejects(edit: impl FnOnce(&mut Value), fragments: &[&str]) {
    let mut t = minimal();
    edit(&mut t);
    let file = format!("{}.json", t["id"].as_str().unwrap_or("x"));
    let e = load(&[t]).expect_err("expected an error");
    assert_eq!(e.file, file);
    for f in fragments {
        assert!(
            e.message.contains(f),
            "`{}` does not contain `{f}`",
            e.message
        );
    }
}

fn prop(t: &mut Value, name: &str, schema: Value) {
    t["settings"]["properties"][name] = schema;
}

#[test]
fn the_minimal_type_loads() {
    let c = load(&[minimal()]).unwrap();
    assert_eq!(c.types().len(), 1);
    assert_eq!(
        c.get("thing").unwrap().secret_fields().collect::<Vec<_>>(),
        ["password"]
    );
}

#[test]
fn an_unmarked_password_is_rejected() {
    rejects(
        |t| prop(t, "password", json!({"type": "string", "title": "P"})),
        &["/settings/properties/password", "looks like a secret"],
    );
    rejects(
        |t| prop(t, "db_passwd", json!({"type": "string", "title": "P"})),
        &["/settings/properties/db_passwd", "passwd"],
    );
}

#[test]
fn a_nested_secret_is_rejected() {
    let nested = |secret: bool, name: &str| {
        let mut inner = json!({"type": "string", "title": "x"});
        if secret {
            inner["secret"] = json!(true);
        }
        json!({"type": "object", "title": "S", "properties": {name: inner}})
    };
    rejects(
        |t| prop(t, "staging", nested(true, "bucket")),
        &[
            "/settings/properties/staging/properties/bucket",
            "top-level",
        ],
    );
    rejects(
        |t| prop(t, "staging", nested(false, "secret_access_key")),
        &[
            "/settings/properties/staging/properties/secret_access_key",
            "top-level",
        ],
    );
    rejects(
        |t| {
            prop(
                t,
                "keys",
                json!({"type": "array", "title": "K", "items": {"type": "string", "title": "k", "secret": true}}),
            )
        },
        &["/settings/properties/keys/items", "top-level"],
    );
}

#[test]
fn secrets_must_be_strings_without_defaults() {
    rejects(
        |t| {
            prop(
                t,
                "pin",
                json!({"type": "integer", "title": "PIN", "secret": true}),
            )
        },
        &["/settings/properties/pin", "must be strings"],
    );
    rejects(
        |t| {
            prop(
                t,
                "password",
                json!({"type": "string", "title": "P", "secret": true, "default": "x"}),
            )
        },
        &[
            "/settings/properties/password/default",
            "cannot have a default",
        ],
    );
}

#[test]
fn duplicate_ids_are_rejected() {
    let a = minimal();
    let files = [("thing.json", a.to_string()), ("thing.json", a.to_string())];
    let refs: Vec<(&str, &str)> = files.iter().map(|(a, b)| (*a, b.as_str())).collect();
    let (kn, kt) = kind_file();
    let e = Catalog::from_files(&refs, &[(kn.as_str(), kt.as_str())]).unwrap_err();
    assert_eq!(e.file, "thing.json");
    assert!(
        e.message
            .contains("/id: duplicate connector type id `thing`"),
        "{}",
        e.message
    );
}

#[test]
fn file_name_and_id_pattern_are_checked() {
    let t = minimal().to_string();
    let (kn, kt) = kind_file();
    let e = Catalog::from_files(&[("other.json", &t)], &[(kn.as_str(), kt.as_str())]).unwrap_err();
    assert_eq!(e.file, "other.json");
    assert!(
        e.message.contains("file name must be `thing.json`"),
        "{}",
        e.message
    );
    rejects(
        |t| t["id"] = json!("Bad_Id"),
        &["/id", "^[a-z0-9][a-z0-9-]*$"],
    );
}

#[test]
fn unknown_category_capability_and_credential_kind_are_rejected() {
    rejects(
        |t| t["category"] = json!("toasters"),
        &["/category", "unknown category `toasters`"],
    );
    rejects(
        |t| t["capabilities"] = json!(["teleport"]),
        &["/capabilities/0", "unknown capability `teleport`"],
    );
    rejects(
        |t| t["capabilities"] = json!([]),
        &["/capabilities", "must not be empty"],
    );
    rejects(
        |t| t["credential_kinds"] = json!(["magic"]),
        &["/credential_kinds/0", "unknown credential kind `magic`"],
    );
    rejects(
        |t| t["credential_kinds"] = json!([]),
        &["/credential_kinds", "must not be empty"],
    );
    rejects(|t| t["name"] = json!(" "), &["/name", "must not be empty"]);
    rejects(
        |t| t["description"] = json!(""),
        &["/description", "must not be empty"],
    );
}

#[test]
fn probes_are_checked() {
    rejects(
        |t| t["probe"] = json!({"kind": "telepathy"}),
        &["/probe/kind", "unknown probe kind"],
    );
    rejects(
        |t| t["probe"] = json!({"kind": "http", "path": "/", "expect_status": [200]}),
        &["/probe/method"],
    );
    rejects(
        |t| t["probe"] = json!({"kind": "http", "method": "GET", "expect_status": [200]}),
        &["/probe/path"],
    );
    rejects(
        |t| t["probe"] = json!({"kind": "http", "method": "GET", "path": "/"}),
        &["/probe/expect_status"],
    );
    rejects(
        |t| t["probe"] = json!({"kind": "http", "method": "GET", "path": "/", "expect_status": [200], "auth": "magic"}),
        &["/probe/auth"],
    );
    rejects(
        |t| t["probe"] = json!({"kind": "http", "base_url": "https://{nope}.example.com", "method": "GET", "path": "/", "expect_status": [200]}),
        &["/probe/base_url", "`{nope}`"],
    );
}

#[test]
fn settings_structure_is_checked() {
    rejects(
        |t| t["settings"]["type"] = json!("string"),
        &["/settings/type", "must be an object"],
    );
    rejects(
        |t| t["settings"]["required"] = json!(["nope"]),
        &["/settings/required/0", "`nope` is not a property"],
    );
    rejects(
        |t| t["settings"]["oneOf"] = json!([{"title": "Key", "required": ["private_key"]}]),
        &["/settings/oneOf/0/required/0", "`private_key`"],
    );
    rejects(
        |t| prop(t, "opts", json!({"type": "object", "title": "O"})),
        &[
            "/settings/properties/opts/properties",
            "must declare properties",
        ],
    );
    rejects(
        |t| prop(t, "list", json!({"type": "array", "title": "L"})),
        &["/settings/properties/list/items", "must declare items"],
    );
    rejects(
        |t| {
            prop(
                t,
                "opts",
                json!({"type": "object", "title": "O", "required": ["x"], "properties": {"y": {"type": "string", "title": "Y"}}}),
            )
        },
        &["/settings/properties/opts/required/0", "`x`"],
    );
    rejects(
        |t| {
            prop(
                t,
                "n",
                json!({"type": "integer", "title": "N", "format": "hostname"}),
            )
        },
        &["/settings/properties/n/format", "strings only"],
    );
    rejects(
        |t| {
            prop(
                t,
                "s",
                json!({"type": "string", "title": "S", "minimum": 1}),
            )
        },
        &["/settings/properties/s/minimum", "integer and number"],
    );
    rejects(
        |t| {
            prop(
                t,
                "n",
                json!({"type": "integer", "title": "N", "minimum": 10, "maximum": 1}),
            )
        },
        &["/settings/properties/n/minimum", "greater than maximum"],
    );
    rejects(
        |t| {
            prop(
                t,
                "g",
                json!({"type": "string", "title": "G", "group": "misc"}),
            )
        },
        &["/settings/properties/g/group", "unknown group"],
    );
    rejects(
        |t| t["docs_url"] = json!("http://example.com"),
        &["/docs_url", "https://"],
    );
}

#[test]
fn enums_and_defaults_are_checked() {
    rejects(
        |t| {
            prop(
                t,
                "mode",
                json!({"type": "string", "title": "M", "enum": []}),
            )
        },
        &["/settings/properties/mode/enum", "must not be empty"],
    );
    rejects(
        |t| {
            prop(
                t,
                "mode",
                json!({"type": "string", "title": "M", "enum": ["a", 1]}),
            )
        },
        &["/settings/properties/mode/enum/1", "not a string"],
    );
    rejects(
        |t| {
            prop(
                t,
                "mode",
                json!({"type": "string", "title": "M", "enum": ["a", "b"], "default": "c"}),
            )
        },
        &[
            "/settings/properties/mode/default",
            "not one of the enum values",
        ],
    );
    rejects(
        |t| {
            prop(
                t,
                "port",
                json!({"type": "integer", "title": "P", "default": "5432"}),
            )
        },
        &["/settings/properties/port/default", "not a integer"],
    );
    rejects(
        |t| {
            prop(
                t,
                "port",
                json!({"type": "integer", "title": "P", "default": 1.5}),
            )
        },
        &["/settings/properties/port/default"],
    );
    rejects(
        |t| {
            prop(
                t,
                "port",
                json!({"type": "integer", "title": "P", "default": 70000, "maximum": 65535}),
            )
        },
        &[
            "/settings/properties/port/default",
            "outside minimum/maximum",
        ],
    );
    rejects(
        |t| {
            prop(
                t,
                "tls",
                json!({"type": "boolean", "title": "T", "default": "yes"}),
            )
        },
        &["/settings/properties/tls/default", "not a boolean"],
    );
}

#[test]
fn unknown_keys_and_bad_json_are_rejected() {
    rejects(|t| t["colour"] = json!("blue"), &["unknown field `colour`"]);
    rejects(
        |t| {
            prop(
                t,
                "host",
                json!({"type": "string", "title": "Host", "sekret": true}),
            )
        },
        &["unknown field `sekret`"],
    );
    let (kn, kt) = kind_file();
    let e =
        Catalog::from_files(&[("broken.json", "{")], &[(kn.as_str(), kt.as_str())]).unwrap_err();
    assert_eq!(e.file, "broken.json");
    assert!(
        e.message.contains("not a valid connector type"),
        "{}",
        e.message
    );
}

#[test]
fn credential_kinds_are_checked() {
    let t = minimal().to_string();
    let check = |kind: Value, file: &str, fragment: &str| {
        let k = kind.to_string();
        let e = Catalog::from_files(&[("thing.json", &t)], &[(file, &k)]).unwrap_err();
        assert_eq!(e.file, file);
        assert!(
            e.message.contains(fragment),
            "`{}` does not contain `{fragment}`",
            e.message
        );
    };
    check(
        json!({"id": "username_password", "name": "U", "description": "d", "fields": {"password": {"type": "string", "title": "P"}}}),
        "username_password.json",
        "/fields/password: name contains `password`",
    );
    check(
        json!({"id": "username_password", "name": "U", "description": "d", "fields": {}}),
        "other.json",
        "file name must be",
    );
    check(
        json!({"id": "username_password", "name": "U", "description": "d", "fields": {}, "required": ["user"]}),
        "username_password.json",
        "/required/0: `user` is not a property",
    );
    check(
        json!({"id": "username_password", "name": "U", "description": "d", "fields": {}, "extra": 1}),
        "username_password.json",
        "unknown field `extra`",
    );
}

#[test]
fn errors_display_the_file_and_message() {
    let e = CatalogError {
        file: "a.json".into(),
        message: "/id: bad".into(),
    };
    assert_eq!(e.to_string(), "catalog file a.json: /id: bad");
    let _: &dyn std::error::Error = &e;
}

/// Loads `types` against the given credential kinds (file name = `<id>.json`).
fn load_kinds(types: &[Value], kinds: &[Value]) -> Result<Catalog, CatalogError> {
    let files = |vs: &[Value]| -> Vec<(String, String)> {
        vs.iter()
            .map(|v| (format!("{}.json", v["id"].as_str().unwrap()), v.to_string()))
            .collect()
    };
    let (t, k) = (files(types), files(kinds));
    Catalog::from_files(&pairs(&t), &pairs(&k))
}

fn pairs(files: &[(String, String)]) -> Vec<(&str, &str)> {
    files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect()
}

/// A SASL-like kind: an enum, a required secret and an optional one.
fn sasl_kind() -> Value {
    json!({"id": "sasl", "name": "SASL", "description": "d",
        "fields": {
            "mechanism": {"type": "string", "title": "M", "enum": ["PLAIN", "SCRAM"]},
            "username": {"type": "string", "title": "U"},
            "password": {"type": "string", "title": "P", "secret": true},
            "session_token": {"type": "string", "title": "T", "secret": true}
        },
        "required": ["username", "password"]})
}

/// `minimal()` accepting the `sasl` kind, with `edit` applied; expects an error naming
/// `thing.json` and every fragment.
fn rejects_sasl(edit: impl FnOnce(&mut Value), fragments: &[&str]) {
    let mut t = minimal();
    t["credential_kinds"] = json!(["sasl"]);
    edit(&mut t);
    let e = load_kinds(&[t], &[sasl_kind()]).expect_err("expected an error");
    assert_eq!(e.file, "thing.json");
    for f in fragments {
        assert!(
            e.message.contains(f),
            "`{}` does not contain `{f}`",
            e.message
        );
    }
}

#[test]
fn credential_map_keys_must_be_accepted_kinds() {
    rejects(
        |t| t["credential_map"] = json!({"api_key": {"key": "password"}}),
        &[
            "/credential_map/api_key",
            "`api_key` is not one of this type's credential_kinds",
        ],
    );
}

#[test]
fn mapped_kind_fields_must_exist_in_the_kind() {
    rejects(
        |t| t["credential_map"] = json!({"username_password": {"pin": "password"}}),
        &[
            "/credential_map/username_password/pin",
            "credential kind `username_password` has no field `pin`",
        ],
    );
}

#[test]
fn credential_map_targets_must_be_settings_properties() {
    rejects(
        |t| t["credential_map"] = json!({"username_password": {"username": "user"}}),
        &[
            "/credential_map/username_password/username",
            "target `user` is not a settings property",
        ],
    );
}

#[test]
fn secret_kind_fields_fill_secret_fields_only() {
    rejects(
        |t| {
            prop(
                t,
                "db_password",
                json!({"type": "string", "title": "P", "secret": true}),
            );
            t["credential_map"] = json!({"username_password": {"password": "host", "username": "db_password"}});
        },
        &[
            "/credential_map/username_password/username",
            "`username_password` field `username` fills `db_password`: a non-secret kind field must not fill a secret field",
        ],
    );
    rejects(
        |t| t["credential_map"] = json!({"username_password": {"password": "host"}}),
        &[
            "/credential_map/username_password/password",
            "`username_password` field `password` fills `host`: a secret kind field must fill a secret field",
        ],
    );
    // The same rule holds for fields filled by name.
    rejects(
        |t| prop(t, "username", json!({"type": "string", "title": "U", "secret": true})),
        &[
            "/credential_kinds/0",
            "`username_password` field `username` fills `username`: a non-secret kind field must not fill a secret field",
        ],
    );
}

#[test]
fn mapped_fields_keep_their_type_and_enum_values() {
    rejects(
        |t| t["credential_map"] = json!({"username_password": {"username": "port"}}),
        &[
            "/credential_map/username_password/username",
            "fills `port`: a string cannot fill a integer",
        ],
    );
    rejects_sasl(
        |t| {
            prop(
                t,
                "sasl_mechanism",
                json!({"type": "string", "title": "M", "enum": ["PLAIN"]}),
            );
            t["credential_map"] = json!({"sasl": {"mechanism": "sasl_mechanism"}});
        },
        &[
            "/credential_map/sasl/mechanism",
            "kind value \"SCRAM\" is not one of `sasl_mechanism`'s enum values",
        ],
    );
}

#[test]
fn a_kind_fills_each_field_once() {
    rejects_sasl(
        |t| t["credential_map"] = json!({"sasl": {"mechanism": "host", "username": "host"}}),
        &[
            "/credential_map/sasl/username",
            "`sasl` field `username` fills `host`, which another field of `sasl` already fills",
        ],
    );
}

#[test]
fn every_required_secret_of_an_accepted_kind_must_fill_a_field() {
    let unmapped = |t: &mut Value| {
        t["settings"]["properties"]
            .as_object_mut()
            .unwrap()
            .remove("password");
        prop(
            t,
            "db_password",
            json!({"type": "string", "title": "P", "secret": true}),
        );
    };
    rejects(unmapped, &[
        "/credential_kinds/0",
        "secret field `password` of credential kind `username_password` fills no field of this type; add a `credential_map` entry for it",
    ]);
    // Mapping it fixes the type; an optional secret (`session_token`) may fill nothing.
    let mut t = minimal();
    unmapped(&mut t);
    t["credential_map"] = json!({"username_password": {"password": "db_password"}});
    let c = load(&[t]).unwrap();
    let ty = c.get("thing").unwrap();
    assert_eq!(
        ty.credential_target("username_password", "password"),
        Some("db_password")
    );
    assert_eq!(ty.credential_target("username_password", "username"), None);
    let mut t = minimal();
    t["credential_kinds"] = json!(["sasl", "none"]);
    let none = json!({"id": "none", "name": "None", "description": "d", "fields": {}});
    load_kinds(&[t], &[sasl_kind(), none]).unwrap();
}
