//! Escaping of untrusted text before it reaches a terminal or a text log.

use std::borrow::Cow;

/// `text` with every control character (C0, DEL and C1: newlines, ESC, BEL,
/// carriage returns, tabs...) escaped as Rust writes it (`\n`, `\u{1b}`), so
/// that relay-supplied or client-supplied text can neither start a new line
/// nor drive the terminal. Text without control characters is borrowed.
pub(crate) fn escape_control(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for ch in text.chars() {
        if ch.is_control() {
            escaped.extend(ch.escape_debug());
        } else {
            escaped.push(ch);
        }
    }
    Cow::Owned(escaped)
}

/// Compact JSON text with every control character still raw in it written
/// as a `\uXXXX` escape. serde_json escapes C0 but leaves DEL and C1 (U+009B
/// is a CSI on many terminals) raw in strings; the result is the same JSON
/// value with nothing raw for a terminal. Compact JSON has control characters
/// only inside strings, where `\uXXXX` is a valid escape.
pub(crate) fn escape_json_controls(json: &str) -> Cow<'_, str> {
    if !json.chars().any(char::is_control) {
        return Cow::Borrowed(json);
    }
    let mut escaped = String::with_capacity(json.len() + 8);
    for ch in json.chars() {
        if ch.is_control() {
            escaped.push_str(&format!("\\u{:04x}", u32::from(ch)));
        } else {
            escaped.push(ch);
        }
    }
    Cow::Owned(escaped)
}

#[cfg(test)]
mod tests {
    use super::{escape_control, escape_json_controls};

    #[test]
    fn json_keeps_its_value_with_no_control_character_raw() {
        let value = serde_json::json!({"name": "Zeb\x1b]0;evil\x07\n\u{7f}\u{9b}2J"});
        let text = escape_json_controls(&value.to_string()).into_owned();
        assert!(!text.chars().any(char::is_control), "{text:?}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&text).unwrap(), value);
        assert_eq!(escape_json_controls("{\"a\":1}"), "{\"a\":1}");
    }

    #[test]
    fn control_characters_are_escaped_and_other_text_kept() {
        assert_eq!(escape_control("Zoë O'Brien-Smith"), "Zoë O'Brien-Smith");
        assert_eq!(escape_control("a\nb\x1b]0;evil\x07\r\u{9b}"), "a\\nb\\u{1b}]0;evil\\u{7}\\r\\u{9b}");
    }
}
