//! Device passwords: one shared password (or a password template) from
//! `TRIBUTARY_DEVICE_PASSWORD`, or a file of `username:password` lines.
//!
//! Passwords never reach output: [`Secret`] prints as `***`, and parse errors name the
//! line number, never its text.

use std::collections::HashMap;
use std::fmt;

use thiserror::Error;

use crate::template::{self, TemplateError};

/// A password; its `Debug` form hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a password.
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// The password itself, for the MQTT CONNECT only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Why credentials could not be read.
#[derive(Debug, Error)]
pub enum CredentialsError {
    /// A line without `:` (the text is not shown: it may be a password).
    #[error("password file line {0}: expected `username:password`")]
    MissingColon(usize),
    /// A line starting with `:`.
    #[error("password file line {0}: empty user name")]
    EmptyUsername(usize),
    /// The same user name twice.
    #[error("password file line {line}: user name {username:?} appears twice")]
    Duplicate { line: usize, username: String },
    /// A device the file has no password for.
    #[error("password file has no password for device {0:?}")]
    Unknown(String),
    /// The password template does not expand.
    #[error("password template: {0}")]
    Template(#[from] TemplateError),
}

/// Parses `username:password` lines; blank lines and lines starting with `#` are skipped.
/// The password is everything after the first `:` (it may contain `:`).
pub fn parse_password_file(text: &str) -> Result<HashMap<String, Secret>, CredentialsError> {
    let mut out = HashMap::new();
    for (index, raw) in text.lines().enumerate() {
        let line_number = index + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let (username, password) = trimmed
            .split_once(':')
            .ok_or(CredentialsError::MissingColon(line_number))?;
        let username = username.trim_end();
        if username.is_empty() {
            return Err(CredentialsError::EmptyUsername(line_number));
        }
        if out
            .insert(username.to_owned(), Secret::new(password))
            .is_some()
        {
            return Err(CredentialsError::Duplicate {
                line: line_number,
                username: username.to_owned(),
            });
        }
    }
    Ok(out)
}

/// Where device passwords come from.
#[derive(Debug, Clone)]
pub enum Passwords {
    /// One template for all devices; without placeholders it is one shared password.
    Template(Secret),
    /// A password per user name.
    File(HashMap<String, Secret>),
}

impl Passwords {
    /// The password of device number `n` with id `device`.
    pub fn for_device(&self, n: u32, device: &str) -> Result<Secret, CredentialsError> {
        match self {
            Passwords::Template(template) => Ok(Secret::new(template::expand(
                template.expose(),
                n,
                Some(device),
            )?)),
            Passwords::File(map) => map
                .get(device)
                .cloned()
                .ok_or_else(|| CredentialsError::Unknown(device.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_file_lines_are_parsed_with_comments_and_colons() {
        let map = parse_password_file("# devices\nmachine-1:s3cret\n\n  machine-2:a:b:c\r\n")
            .expect("parse");
        assert_eq!(map.len(), 2);
        assert_eq!(map["machine-1"].expose(), "s3cret");
        assert_eq!(map["machine-2"].expose(), "a:b:c");
    }

    #[test]
    fn malformed_lines_are_reported_by_number_without_their_text() {
        let error = parse_password_file("a:1\nhunter2\n").expect_err("no colon");
        let message = error.to_string();
        assert!(message.contains("line 2"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
        assert!(matches!(
            parse_password_file(":x"),
            Err(CredentialsError::EmptyUsername(1))
        ));
        assert!(matches!(
            parse_password_file("a:1\na:2"),
            Err(CredentialsError::Duplicate { line: 2, .. })
        ));
    }

    #[test]
    fn secrets_do_not_print() {
        let passwords = Passwords::Template(Secret::new("hunter2"));
        assert!(!format!("{passwords:?}").contains("hunter2"));
    }

    #[test]
    fn template_gives_each_device_its_password() {
        let passwords = Passwords::Template(Secret::new("pw-{n}-{device}"));
        let secret = passwords.for_device(3, "m-3").expect("expand");
        assert_eq!(secret.expose(), "pw-3-m-3");
        let shared = Passwords::Template(Secret::new("same"));
        assert_eq!(
            shared.for_device(9, "m-9").expect("shared").expose(),
            "same"
        );
    }

    #[test]
    fn file_without_the_device_is_an_error() {
        let passwords = Passwords::File(parse_password_file("m-1:x").expect("parse"));
        assert!(passwords.for_device(1, "m-1").is_ok());
        assert!(matches!(
            passwords.for_device(2, "m-2"),
            Err(CredentialsError::Unknown(device)) if device == "m-2"
        ));
    }
}
