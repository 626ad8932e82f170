//! The log `tessera serve` writes: the subscriber it installs (text or JSON, the level from
//! `RUST_LOG` or `log.level`), and the escaping that keeps a byte from the network from
//! reaching a text line as it came. A client identifier, user name or topic is logged as a
//! field; a newline in one would otherwise start a forged log line, and an ESC sequence would
//! reach the operator's terminal. tracing-subscriber's own text format escapes only a few
//! characters, and only in the message, so every field of the text format goes through
//! [`escape_controls`]. The JSON format escapes control characters itself.

use std::fmt::{self, Write};
use std::io::IsTerminal;

use tessera_config::{Config, LogFormat};
use tracing::field::Field;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::format::{Writer, debug_fn};

pub fn init(config: &Config) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder
            .fmt_fields(debug_fn(format_field).delimited(" "))
            .init(),
    }
}

/// One field of a text line, as tracing-subscriber writes it (`name=value`, the message bare),
/// with its control characters escaped.
fn format_field(w: &mut Writer<'_>, field: &Field, value: &dyn fmt::Debug) -> fmt::Result {
    let mut out = Escaping(w);
    if field.name() == "message" {
        write!(out, "{value:?}")
    } else {
        write!(out, "{}={value:?}", field.name())
    }
}

/// Writes through to `W`, every control character (C0, DEL, C1) escaped.
struct Escaping<W>(W);

impl<W: Write> Write for Escaping<W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escape_controls(s, &mut self.0)
    }
}

/// `s` with `\n`, `\r` and `\t` as those escapes and every other control character as
/// `\u{..}`, as Rust's `escape_debug` writes them.
pub fn escape_controls(s: &str, out: &mut impl Write) -> fmt::Result {
    let mut rest = s;
    while let Some(at) = rest.find(|c: char| c.is_control()) {
        out.write_str(&rest[..at])?;
        let c = rest[at..].chars().next().unwrap_or_default();
        match c {
            '\n' => out.write_str("\\n")?,
            '\r' => out.write_str("\\r")?,
            '\t' => out.write_str("\\t")?,
            c => write!(out, "\\u{{{:x}}}", c as u32)?,
        }
        rest = &rest[at + c.len_utf8()..];
    }
    out.write_str(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(s: &str) -> String {
        let mut out = String::new();
        escape_controls(s, &mut out).unwrap();
        out
    }

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(escaped("plain/topic é 日本"), "plain/topic é 日本");
        assert_eq!(
            escaped("id\n2026-12-02T00:00:00Z  INFO forged"),
            "id\\n2026-12-02T00:00:00Z  INFO forged"
        );
        assert_eq!(
            escaped("\r\t\u{1b}[31m\u{7f}\u{85}x"),
            "\\r\\t\\u{1b}[31m\\u{7f}\\u{85}x"
        );
        assert!(!escaped("a\u{1}b\u{9f}").chars().any(char::is_control));
    }
}
