//! Reading a data-plane binary's config file: YAML (of which JSON is a subset), errors that
//! name the file and where in it the problem is (`sinks[1].redis`).

use std::path::Path;

use serde::de::DeserializeOwned;

/// A config file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config {path}: {message}")]
    Read {
        /// The path.
        path: String,
        /// The I/O error.
        message: String,
    },
    /// The file is not a valid config of its kind.
    #[error("invalid config {path}: {message}")]
    Parse {
        /// The path (empty when parsing text).
        path: String,
        /// What is wrong, with the location.
        message: String,
    },
    /// The values do not make sense together.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// Reads and parses the file at `path`, then checks it with `validate`.
pub fn load<T: DeserializeOwned>(
    path: &Path,
    validate: impl Fn(&T) -> Result<(), ConfigError>,
) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let config = parse(&text).map_err(|e| match e {
        ConfigError::Parse { message, .. } => ConfigError::Parse {
            path: path.display().to_string(),
            message,
        },
        other => other,
    })?;
    validate(&config)?;
    Ok(config)
}

/// Parses config text (not yet checked beyond its types).
pub fn parse<T: DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    // Through a JSON value: serde_yaml 0.9 wants YAML tags (`!pipeline`) for enums, while
    // the operator and users write the usual single-key maps (`pipeline: ...`).
    let value: serde_json::Value = serde_yaml::from_str(text).map_err(|e| ConfigError::Parse {
        path: String::new(),
        message: e.to_string(),
    })?;
    serde_path_to_error::deserialize(value).map_err(|e| ConfigError::Parse {
        path: String::new(),
        message: match e.path().to_string().as_str() {
            "." => e.inner().to_string(),
            at => format!("at {at}: {}", e.inner()),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        items: Vec<Item>,
    }

    #[derive(Debug, PartialEq, serde::Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    enum Item {
        Pipeline { steps: u32 },
    }

    #[test]
    fn errors_name_where_in_the_file_the_problem_is() {
        let sample: Sample = parse("items: [{pipeline: {steps: 2}}]").expect("parses");
        assert_eq!(sample.items, vec![Item::Pipeline { steps: 2 }]);
        let error = parse::<Sample>("items: [{pipeline: {steps: 2}}, {pipeline: {stpes: 1}}]")
            .expect_err("unknown field");
        assert!(error.to_string().contains("at items[1]"), "{error}");
    }

    #[test]
    fn a_missing_file_and_a_refused_check_are_told_apart() {
        let missing = load::<Sample>(Path::new("/nonexistent/tributary.yaml"), |_| Ok(()));
        assert!(matches!(missing, Err(ConfigError::Read { .. })));
        let dir = std::env::temp_dir().join(format!("tributary-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("c.yaml");
        std::fs::write(&file, "items: []").expect("write");
        let refused = load::<Sample>(&file, |_| Err(ConfigError::Invalid("empty".into())));
        assert!(matches!(refused, Err(ConfigError::Invalid(_))));
        let _ = std::fs::remove_dir_all(dir);
    }
}
