//! Text taken from a message, made fit for a reason or a log line.

/// Shortens text taken from a message (for reasons and logs): at most `max` characters, and an
/// ellipsis when something was cut.
pub fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(max).collect();
        out.push('…');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_keeps_short_text() {
        assert_eq!(clip("abc", 3), "abc");
        assert_eq!(clip("", 0), "");
    }

    #[test]
    fn clip_cuts_long_text_with_an_ellipsis() {
        assert_eq!(clip("abcd", 3), "abc…");
        assert_eq!(clip("abc", 0), "…");
    }

    #[test]
    fn clip_counts_characters_not_bytes() {
        assert_eq!(clip("héllo", 5), "héllo");
        assert_eq!(clip("héllo", 2), "hé…");
        assert_eq!(clip("日本語テキスト", 3), "日本語…");
    }
}
