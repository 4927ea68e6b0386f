//! Redis keys rendered from message values: shared by the worker's Redis sink, which writes
//! them, and the API, which reads them back, so both always name the same key.

/// Appends a message value to a key, percent-encoding (`%XX` per byte) the characters that
/// would let the value steer the key: the separator `:`, `#` (the `<key>#id` companion keys),
/// glob characters `* ? [ ]`, cluster hash tags `{ }`, backslash, whitespace and control
/// characters, and `%` itself so distinct values always give distinct keys. Ordinary device
/// names and numbers are unchanged.
pub fn push_key_field(out: &mut String, value: &str) {
    for c in value.chars() {
        let unsafe_char = matches!(
            c,
            '%' | ':' | '#' | '*' | '?' | '[' | ']' | '{' | '}' | '\\'
        ) || c.is_whitespace()
            || c.is_control();
        if unsafe_char {
            let mut buffer = [0u8; 4];
            for byte in c.encode_utf8(&mut buffer).bytes() {
                out.push_str(percent_encoding::percent_encode_byte(byte));
            }
        } else {
            out.push(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::push_key_field;

    fn key(value: &str) -> String {
        let mut out = String::from("latest:");
        push_key_field(&mut out, value);
        out
    }

    #[test]
    fn ordinary_names_are_unchanged_and_steering_characters_are_encoded() {
        assert_eq!(key("machine-7"), "latest:machine-7");
        assert_eq!(key("a:b"), "latest:a%3Ab");
        assert_eq!(key("d1#id"), "latest:d1%23id");
        assert_eq!(key("*"), "latest:%2A");
        assert_ne!(key("a%3Ab"), key("a:b"));
        // Multi-byte characters are encoded per byte; other non-ASCII text is kept.
        assert_eq!(key("a\u{a0}b"), "latest:a%C2%A0b");
        assert_eq!(key("café"), "latest:café");
    }
}
