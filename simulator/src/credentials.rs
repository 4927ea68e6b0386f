//! Device passwords: one shared password (or a password template) from
//! `TRIBUTARY_DEVICE_PASSWORD`, a file of `username:password` lines, or a credentials
//! directory holding `DEVICE/password` files (the layout of a projected volume of the
//! Device resources' `<name>-credentials` Secrets), which wins over the other two.
//!
//! Passwords never reach output: [`Secret`] prints as `***`, and parse errors name the
//! line number, never its text.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

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
    /// The credentials directory has no password for a device, and nothing else gives one.
    #[error("device {device:?}: no password file {path} (and no --password-file or password template to fall back on)")]
    NotInDirectory { device: String, path: String },
    /// A device's password file cannot be read (its text is never shown).
    #[error("device {device:?}: cannot read {path}: {reason}")]
    DirectoryRead {
        device: String,
        path: String,
        reason: String,
    },
    /// A device's password file is empty.
    #[error("device {device:?}: {path} is empty")]
    EmptyPasswordFile { device: String, path: String },
    /// A device id that cannot be a folder name.
    #[error("device {0:?}: its id cannot name a folder of the credentials directory")]
    NotAFolderName(String),
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

/// The password of `device` in a credentials directory: the text of `DIR/DEVICE/password`
/// without one trailing line break; `None` when the device has no folder or file there.
pub fn read_from_directory(dir: &Path, device: &str) -> Result<Option<Secret>, CredentialsError> {
    if device.is_empty() || device == "." || device == ".." || device.contains(['/', '\\']) {
        return Err(CredentialsError::NotAFolderName(device.to_owned()));
    }
    let path = dir.join(device).join("password");
    let shown = path.display().to_string();
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(CredentialsError::DirectoryRead {
                device: device.to_owned(),
                path: shown,
                reason: error.to_string(),
            })
        }
    };
    let text = String::from_utf8(bytes).map_err(|_| CredentialsError::DirectoryRead {
        device: device.to_owned(),
        path: shown.clone(),
        reason: "not UTF-8 text".into(),
    })?;
    let password = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text);
    if password.is_empty() {
        return Err(CredentialsError::EmptyPasswordFile {
            device: device.to_owned(),
            path: shown,
        });
    }
    Ok(Some(Secret::new(password)))
}

/// Where device passwords come from.
#[derive(Debug, Clone)]
pub enum Passwords {
    /// One template for all devices; without placeholders it is one shared password.
    Template(Secret),
    /// A password per user name.
    File(HashMap<String, Secret>),
    /// `DIR/DEVICE/password` files, else the fallback (a file or template), if any.
    Directory {
        dir: PathBuf,
        fallback: Option<Box<Passwords>>,
    },
}

impl Passwords {
    /// The password of device number `n` with id `device`.
    pub fn for_device(&self, n: u32, device: &str) -> Result<Secret, CredentialsError> {
        match self {
            Passwords::Directory { dir, fallback } => match read_from_directory(dir, device)? {
                Some(secret) => Ok(secret),
                None => match fallback {
                    Some(fallback) => fallback.for_device(n, device),
                    None => Err(CredentialsError::NotInDirectory {
                        device: device.to_owned(),
                        path: dir.join(device).join("password").display().to_string(),
                    }),
                },
            },
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

    /// A fresh directory under the system's temporary folder, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let path = std::env::temp_dir().join(format!(
                "simulator-{name}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).expect("create temp dir");
            TempDir(path)
        }

        fn password(&self, device: &str, text: &str) {
            std::fs::create_dir_all(self.0.join(device)).expect("device folder");
            std::fs::write(self.0.join(device).join("password"), text).expect("write");
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn directory_passwords_win_over_the_template_and_lose_one_line_break() {
        let dir = TempDir::new("dir-wins");
        dir.password("m-1", "generated-1\n");
        dir.password("m-2", "generated:2\r\n");
        let passwords = Passwords::Directory {
            dir: dir.0.clone(),
            fallback: Some(Box::new(Passwords::Template(Secret::new("template")))),
        };
        assert_eq!(
            passwords.for_device(1, "m-1").expect("m-1").expose(),
            "generated-1"
        );
        assert_eq!(
            passwords.for_device(2, "m-2").expect("m-2").expose(),
            "generated:2"
        );
        // A device the directory does not hold falls back to the template.
        assert_eq!(
            passwords.for_device(3, "m-3").expect("m-3").expose(),
            "template"
        );
    }

    #[test]
    fn directory_errors_name_the_device_never_the_password() {
        let dir = TempDir::new("dir-errors");
        dir.password("m-1", "hunter2");
        dir.password("m-2", "\n");
        std::fs::create_dir_all(dir.0.join("m-3").join("password")).expect("a folder");
        let passwords = Passwords::Directory {
            dir: dir.0.clone(),
            fallback: None,
        };
        let message = |device: &str| {
            passwords
                .for_device(1, device)
                .expect_err("an error")
                .to_string()
        };
        for device in ["m-2", "m-3", "m-4"] {
            let text = message(device);
            assert!(text.contains(&format!("{device:?}")), "{text}");
            assert!(!text.contains("hunter2"), "{text}");
        }
        assert!(message("m-2").contains("is empty"));
        assert!(message("m-4").contains("no password file"));
        assert!(matches!(
            passwords.for_device(1, "../m-1"),
            Err(CredentialsError::NotAFolderName(_))
        ));
        assert!(!format!("{passwords:?}").contains("hunter2"));
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
