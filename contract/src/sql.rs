//! The SQL names a PostgreSQL sink may use, checked the same way by the operator (which
//! refuses the Sink) and the worker (which builds its statements from them).

/// Longest PostgreSQL identifier (NAMEDATALEN − 1).
const MAX_IDENTIFIER: usize = 63;

/// Quotes an identifier after checking it is a plain one (a letter or `_`, then letters,
/// digits or `_`, at most 63 characters); `None` otherwise.
pub fn quote_ident(name: &str) -> Option<String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    (first_ok
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= MAX_IDENTIFIER)
        .then(|| format!("\"{name}\""))
}

/// Quotes `table` or `schema.table`; `None` unless every part is a plain identifier.
pub fn quote_table(name: &str) -> Option<String> {
    let parts: Option<Vec<String>> = name.split('.').map(quote_ident).collect();
    parts.filter(|p| p.len() <= 2).map(|p| p.join("."))
}

/// Whether a column type (used as written in `CREATE TABLE`) cannot end the statement or
/// open a quoted name or string: `text`, `double precision`, `numeric(10,2)`, `jsonb`.
pub fn is_plain_column_type(sql_type: &str) -> bool {
    !sql_type.trim().is_empty() && !sql_type.contains([';', '"', '\'', '-', '/', '\\'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_checked_and_quoted() {
        assert_eq!(
            quote_table("telemetry.readings").as_deref(),
            Some("\"telemetry\".\"readings\"")
        );
        assert_eq!(quote_ident("_seq2").as_deref(), Some("\"_seq2\""));
        assert_eq!(quote_ident("bad name"), None);
        assert_eq!(quote_ident("x\";drop"), None);
        assert_eq!(quote_ident("2fast"), None);
        assert_eq!(quote_ident(&"a".repeat(64)), None);
        assert_eq!(quote_table("a.b.c"), None);
        assert_eq!(quote_table(""), None);
    }

    #[test]
    fn column_types_cannot_escape_the_statement() {
        for ok in [
            "text",
            "double precision",
            "numeric(10,2)",
            "timestamptz",
            "jsonb",
        ] {
            assert!(is_plain_column_type(ok), "{ok}");
        }
        for bad in [
            "",
            "text); DROP TABLE x",
            "text -- c",
            "text /* c */",
            "\"x\"",
            "'a'",
        ] {
            assert!(!is_plain_column_type(bad), "{bad}");
        }
    }
}
