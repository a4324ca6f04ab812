//! Escaping of untrusted text before it reaches a terminal or a text log.

use std::borrow::Cow;

/// `text` with every control character (C0, DEL and C1: newlines, ESC, BEL,
/// carriage returns, tabs...) escaped as Rust writes it (`\n`, `\u{1b}`), so
/// that relay-supplied or client-supplied text can neither start a new line
/// nor drive the terminal. Text without control characters is borrowed.
pub fn escape_control(text: &str) -> Cow<'_, str> {
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

#[cfg(test)]
mod tests {
    use super::escape_control;

    #[test]
    fn control_characters_are_escaped_and_other_text_kept() {
        assert_eq!(escape_control("Zoë O'Brien-Smith"), "Zoë O'Brien-Smith");
        assert_eq!(escape_control("a\nb\x1b]0;evil\x07\r\u{9b}"), "a\\nb\\u{1b}]0;evil\\u{7}\\r\\u{9b}");
    }
}
