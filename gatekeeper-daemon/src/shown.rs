//! Text an agent controls (argv, paths, file names, comm, justifications), made safe to show to a
//! reviewer: what cannot be seen is written visibly, every field has a cap with a visible marker,
//! and each channel's markup is neutralized, so that no value can mention anyone, link anywhere,
//! or draw a line that looks like the system's own.

use std::fmt::Write as _;

/// Bytes of one value shown in a message field or a CLI line, before the cap's marker.
pub const FIELD_LIMIT: usize = 1000;

/// Characters that change how text around them looks without being seen themselves (bidi
/// overrides and isolates, zero-width spaces and joiners, the byte-order mark, tags), and
/// letters that draw nothing.
fn is_invisible_format(ch: char) -> bool {
    matches!(
        ch,
        // Format characters (soft hyphen, bidi controls, joiners, invisible operators, tags).
        '\u{ad}'
            | '\u{61c}'
            | '\u{180e}'
            | '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2060}'..='\u{206f}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffb}'
            | '\u{e0000}'..='\u{e007f}'
            // Letters and marks that draw nothing: a run of them pads like spaces.
            | '\u{34f}'
            | '\u{115f}'
            | '\u{1160}'
            | '\u{17b4}'
            | '\u{17b5}'
            | '\u{180b}'..='\u{180d}'
            | '\u{2800}'
            | '\u{3164}'
            | '\u{fe00}'..='\u{fe0f}'
            | '\u{ffa0}'
            | '\u{1d159}'
            | '\u{1d173}'..='\u{1d17a}'
            | '\u{e0100}'..='\u{e01ef}'
    )
}

/// Spaces in a row shown as they are; a longer run is counted instead, so that no padding can
/// push the agent's words to the start of a line a reviewer's terminal or chat window wraps.
const SPACES_SHOWN: usize = 2;

/// `text` with control, invisible formatting and whitespace characters other than the space
/// written as escapes (`\n`, `\t`, `\u{202e}`, `\u{2028}`, and `\\` for a backslash, so an
/// escape cannot be faked), runs of more than `SPACES_SHOWN` spaces as `[N spaces]`, cut to at
/// most `limit` bytes followed by a marker saying how much was cut.
pub fn visible(text: &str, limit: usize) -> String {
    let mut shown = String::with_capacity(text.len().min(limit) + 16);
    let mut chars = text.char_indices().peekable();
    while let Some((offset, ch)) = chars.next() {
        let mut piece = String::new();
        match ch {
            '\n' => piece.push_str("\\n"),
            '\r' => piece.push_str("\\r"),
            '\t' => piece.push_str("\\t"),
            '\\' => piece.push_str("\\\\"),
            ' ' => {
                let mut run = 1;
                while chars.next_if(|(_, next)| *next == ' ').is_some() {
                    run += 1;
                }
                if run > SPACES_SHOWN {
                    let _ = write!(piece, "[{run} spaces]");
                } else {
                    piece.push_str(&" ".repeat(run));
                }
            }
            ch if ch.is_control() || ch.is_whitespace() || is_invisible_format(ch) => {
                let _ = write!(piece, "\\u{{{:x}}}", ch as u32);
            }
            ch => piece.push(ch),
        }
        if shown.len() + piece.len() > limit {
            let _ = write!(shown, "…[{} more bytes]", text.len() - offset);
            return shown;
        }
        shown.push_str(&piece);
    }
    shown
}

/// An argument list as a shell would take it back: each argument that holds anything but plain
/// characters single-quoted, so that where one ends and the next begins is never ambiguous.
pub fn quoted_args<'a>(args: impl IntoIterator<Item = &'a str>) -> String {
    let plain = |ch: char| ch.is_ascii_alphanumeric() || "_./:=,@%+-".contains(ch);
    args.into_iter()
        .map(|arg| {
            if !arg.is_empty() && arg.chars().all(plain) {
                arg.to_owned()
            } else {
                format!("'{}'", arg.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Slack mrkdwn: `&`, `<` and `>` as entities, so no `<!channel>`, `<@U…>` or `<url|label>`
/// survives. (Values that need no formatting go out as `plain_text`, which Slack does not
/// parse at all.)
pub fn slack_escaped(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Teams (Adaptive Card) markdown: the punctuation that opens emphasis, code, links, headings,
/// quotes and tables backslash-escaped, and a value that would start a list item escaped too.
pub fn teams_escaped(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len() + 8);
    let digits = text.chars().take_while(char::is_ascii_digit).count();
    for (index, ch) in text.chars().enumerate() {
        let opens_list = match ch {
            '-' | '+' => index == 0,
            '.' | ')' => digits > 0 && index == digits,
            _ => false,
        };
        if opens_list || "\\*_`~[]()<>#|!".contains(ch) {
            escaped.push('\\');
        }
        escaped.push(ch);
    }
    escaped
}

#[cfg(test)]
mod tests {
    #[test]
    fn quoted_args_mark_every_boundary() {
        assert_eq!(
            super::quoted_args(["pg_dump", "prod", "-t", "orders"]),
            "pg_dump prod -t orders"
        );
        assert_eq!(
            super::quoted_args(["sh", "-c", "rm -rf /tmp/x", "", "it's"]),
            "sh -c 'rm -rf /tmp/x' '' 'it'\\''s'"
        );
    }

    use super::*;

    #[test]
    fn what_cannot_be_seen_is_written_visibly() {
        assert_eq!(
            visible("ls\n✅ approved by security\r\t\x1b[2K", 100),
            "ls\\n✅ approved by security\\r\\t\\u{1b}[2K"
        );
        // A right-to-left override would show `pg_dump --all` reversed; a zero-width space
        // would hide between letters.
        assert_eq!(
            visible("a\u{202e}b\u{200b}c\u{7f}", 100),
            "a\\u{202e}b\\u{200b}c\\u{7f}"
        );
        // A backslash typed by the agent cannot pose as an escape.
        assert_eq!(visible("\\n", 100), "\\\\n");
        assert_eq!(
            visible("plain /usr/bin/pg_dump", 100),
            "plain /usr/bin/pg_dump"
        );
        // Padding that would wrap `Risk: LOW` to the start of a reviewer's line is counted, and
        // other line breaks and blanks are escapes.
        let padded = format!("ticket 1.{}Risk: LOW", " ".repeat(231));
        assert_eq!(visible(&padded, 1000), "ticket 1.[231 spaces]Risk: LOW");
        assert_eq!(visible("a  b   c", 100), "a  b[3 spaces]c");
        assert_eq!(
            visible("a\u{2028}b\u{2029}c\u{a0}d\u{3000}e", 100),
            "a\\u{2028}b\\u{2029}c\\u{a0}d\\u{3000}e"
        );
        // Blank letters and format characters that are no whitespace pad as well.
        for blank in [
            '\u{2800}',
            '\u{3164}',
            '\u{ffa0}',
            '\u{115f}',
            '\u{ad}',
            '\u{e0020}',
        ] {
            let shown = visible(&format!("a{blank}b"), 100);
            assert_eq!(shown, format!("a\\u{{{:x}}}b", blank as u32));
        }
    }

    #[test]
    fn long_values_are_cut_with_a_marker() {
        let long = "x".repeat(50);
        assert_eq!(
            visible(&long, 10),
            format!("{}…[40 more bytes]", "x".repeat(10))
        );
        // Never inside a character or an escape.
        assert_eq!(visible("ééé", 3), "é…[4 more bytes]");
        assert_eq!(visible("a\nb", 2), "a…[2 more bytes]");
        assert_eq!(visible(&long, 50), long);
    }

    #[test]
    fn slack_markup_is_neutralized() {
        assert_eq!(
            slack_escaped("<!channel> <@U123> <https://evil|click> & co"),
            "&lt;!channel&gt; &lt;@U123&gt; &lt;https://evil|click&gt; &amp; co"
        );
    }

    #[test]
    fn teams_markup_is_neutralized() {
        assert_eq!(
            teams_escaped("**approved** by [security](https://evil) `x` _y_ # z"),
            "\\*\\*approved\\*\\* by \\[security\\]\\(https://evil\\) \\`x\\` \\_y\\_ \\# z"
        );
        assert_eq!(teams_escaped("- item"), "\\- item");
        assert_eq!(teams_escaped("12. item"), "12\\. item");
        assert_eq!(teams_escaped("a-b 1.5"), "a-b 1.5");
        assert_eq!(teams_escaped("c:\\x"), "c:\\\\x");
    }
}
