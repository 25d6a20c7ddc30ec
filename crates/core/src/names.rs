//! Names and labels users choose: connection, workspace and project names, environments,
//! tags. Rules are strict so names are safe in URLs, env var names and shell scripts.

use std::sync::OnceLock;

use regex_lite::Regex;

use crate::error::{Error, ErrorCode};

pub const NAME_RULE: &str = "[a-z0-9][a-z0-9._-]{0,62}";
pub const MAX_TAGS: usize = 32;
pub const MAX_DESCRIPTION: usize = 4096;

fn name_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(&format!("^{NAME_RULE}$")).expect("valid regex"))
}

fn label_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new("^[a-z0-9][a-z0-9_-]{0,31}$").expect("valid regex"))
}

fn tag_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new("^[A-Za-z0-9][A-Za-z0-9_.:/=-]{0,63}$").expect("valid regex"))
}

/// Names of connections, workspaces and projects. `field` is the JSON pointer reported.
pub fn check_name(field: &str, name: &str) -> Result<(), Error> {
    if name_re().is_match(name) {
        Ok(())
    } else {
        Err(Error::field(
            ErrorCode::InvalidName,
            field,
            format!("names must match {NAME_RULE}, e.g. prod-postgres-finance"),
        ))
    }
}

/// Environment labels: prod, staging, dev, or any short lowercase label.
pub fn check_environment(field: &str, env: &str) -> Result<(), Error> {
    if label_re().is_match(env) {
        Ok(())
    } else {
        Err(Error::field(
            ErrorCode::InvalidField,
            field,
            "environment must match [a-z0-9][a-z0-9_-]{0,31}, e.g. prod, staging, dev",
        ))
    }
}

pub fn check_tags(field: &str, tags: &[String]) -> Result<(), Error> {
    if tags.len() > MAX_TAGS {
        return Err(Error::field(
            ErrorCode::InvalidField,
            field,
            format!("at most {MAX_TAGS} tags"),
        ));
    }
    for (i, t) in tags.iter().enumerate() {
        if !tag_re().is_match(t) {
            return Err(Error::field(
                ErrorCode::InvalidField,
                format!("{field}/{i}"),
                "tags must match [A-Za-z0-9][A-Za-z0-9_.:/=-]{0,63}",
            ));
        }
    }
    Ok(())
}

pub fn check_description(field: &str, d: &str) -> Result<(), Error> {
    if d.chars().count() > MAX_DESCRIPTION {
        return Err(Error::field(
            ErrorCode::InvalidField,
            field,
            format!("description is limited to {MAX_DESCRIPTION} characters"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_documented_rule() {
        for ok in [
            "prod-postgres-finance",
            "a",
            "0",
            "x.y_z-1",
            &"a".repeat(63),
        ] {
            assert!(check_name("/name", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            ".a",
            "A",
            "a b",
            "ä",
            "a/b",
            &"a".repeat(64),
            "_a",
        ] {
            let e = check_name("/name", bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidName, "{bad}");
            assert_eq!(e.field.as_deref(), Some("/name"));
        }
    }

    #[test]
    fn tags_and_environments_are_checked() {
        assert!(check_environment("/environment", "prod").is_ok());
        assert!(check_environment("/environment", "Prod").is_err());
        assert!(check_tags("/tags", &["team:finance".into(), "pii".into()]).is_ok());
        let e = check_tags("/tags", &["ok".into(), "bad tag".into()]).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("/tags/1"));
        assert!(check_tags("/tags", &vec!["t".to_string(); 33]).is_err());
    }
}
