//! Bounds on the CEL expressions of a worker config, checked where the config is loaded (the
//! worker at start, the operator while validating a Worker or Sink) before anything parses
//! them.
//!
//! CEL evaluation cannot be interrupted (the interpreter exposes no step budget), so cost is
//! bounded by what goes in: the expression's size and how deeply its comprehensions
//! (`map`, `filter`, `all`, `exists`, `exists_one`) nest — each nesting level multiplies the
//! work by the length of a list from the message, which the broker's message size bounds.
//! The values an expression builds are bounded separately by the worker after evaluation
//! ([`MAX_VALUE_BYTES`]).

/// Longest accepted expression source, in bytes.
pub const MAX_SOURCE_BYTES: usize = 4096;

/// Deepest accepted nesting of comprehension macros (`rows.map(r, r.cells.filter(...))` is 2).
pub const MAX_COMPREHENSION_NESTING: usize = 2;

/// Largest value (strings and bytes counted by length, list items and map entries by 8
/// bytes each at least) one evaluation may produce; a message whose expression builds more is
/// dead-lettered.
pub const MAX_VALUE_BYTES: usize = 1 << 20;

const MACROS: [&str; 5] = ["map", "filter", "all", "exists", "exists_one"];

/// Checks `source` against [`MAX_SOURCE_BYTES`] and [`MAX_COMPREHENSION_NESTING`]; the
/// error says which bound and by how much.
pub fn check(source: &str) -> Result<(), String> {
    if source.len() > MAX_SOURCE_BYTES {
        return Err(format!(
            "the expression is {} bytes long, more than the {MAX_SOURCE_BYTES} allowed",
            source.len()
        ));
    }
    let nesting = comprehension_nesting(source);
    if nesting > MAX_COMPREHENSION_NESTING {
        return Err(format!(
            "comprehensions (map, filter, all, exists, exists_one) nest {nesting} deep, more \
             than the {MAX_COMPREHENSION_NESTING} allowed"
        ));
    }
    Ok(())
}

/// The deepest nesting of `.macro(` calls in `source`, string literals skipped.
fn comprehension_nesting(source: &str) -> usize {
    let bytes = source.as_bytes();
    // One entry per open parenthesis: whether it opened a comprehension.
    let mut open: Vec<bool> = Vec::new();
    let (mut depth, mut deepest, mut i) = (0usize, 0usize, 0usize);
    while i < bytes.len() {
        match bytes[i] {
            quote @ (b'"' | b'\'') => i = skip_string(bytes, i, quote),
            b'(' => {
                let opens = MACROS.iter().any(|name| {
                    i > name.len()
                        && bytes[..i].ends_with(name.as_bytes())
                        && bytes[i - name.len() - 1] == b'.'
                });
                open.push(opens);
                if opens {
                    depth += 1;
                    deepest = deepest.max(depth);
                }
            }
            // The pop happens whether or not the guard holds.
            b')' if open.pop() == Some(true) => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    deepest
}

/// The index of the closing quote of the string literal opening at `start` (triple quotes
/// and backslash escapes understood), or the end of the source.
fn skip_string(bytes: &[u8], start: usize, quote: u8) -> usize {
    let triple = bytes.get(start..start + 3) == Some(&[quote, quote, quote][..]);
    let mut i = start + if triple { 3 } else { 1 };
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            i += 2;
            continue;
        }
        if bytes[i] == quote {
            if !triple {
                return i;
            }
            if bytes.get(i..i + 3) == Some(&[quote, quote, quote][..]) {
                return i + 2;
            }
        }
        i += 1;
    }
    bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_expressions_pass() {
        for source in [
            "payload.temp * 1.8 + 32.0",
            "payload.rows.map(r, r.cells.filter(c, c > 0))",
            "device + '.map(x, .map(y, .map(z'",
        ] {
            assert_eq!(check(source), Ok(()), "{source}");
        }
    }

    #[test]
    fn an_over_long_expression_is_refused_with_its_length() {
        let source = format!("'{}'", "a".repeat(MAX_SOURCE_BYTES));
        let error = check(&source).expect_err("too long");
        assert!(
            error.contains("4098 bytes") && error.contains("4096"),
            "{error}"
        );
    }

    #[test]
    fn comprehensions_nested_three_deep_are_refused() {
        let source = "l.map(a, l.map(b, l.exists(c, c == a + b)))";
        let error = check(source).expect_err("too deep");
        assert!(error.contains("nest 3 deep"), "{error}");
        // Side by side is not nesting.
        assert_eq!(check("l.map(a, a).map(b, b).filter(c, true)"), Ok(()));
    }

    #[test]
    fn triple_quoted_strings_and_escapes_are_skipped() {
        assert_eq!(comprehension_nesting(r#"'''x.map(''' + "\".map(" "#), 0);
        assert_eq!(
            comprehension_nesting("l.map(x, x + ')') .filter(y, true)"),
            1
        );
    }
}
