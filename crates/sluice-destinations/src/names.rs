//! Identifiers: turning field and table names (which are data) into safe SQL.
//!
//! A field can be called `"); DROP TABLE x; --`, contain dots, spaces or
//! unicode, or be 300 characters long. Every identifier sluice sends is
//! therefore quoted by [`quote`], and destinations with a length limit
//! (PostgreSQL: 63 bytes) shorten names with [`fit`], which keeps a readable
//! prefix and adds a hash of the full name so two long names never collide.

use sha2::{Digest, Sha256};

/// PostgreSQL's `NAMEDATALEN - 1`: longer identifiers are silently truncated by the server.
pub const POSTGRES_MAX_IDENTIFIER: usize = 63;

/// The name as the destination stores it: unchanged when it fits in `max_bytes`
/// and has no NUL (which no SQL engine accepts); otherwise a prefix cut at a
/// character boundary plus `_` and 8 hex digits of the full name's SHA-256.
pub fn fit(name: &str, max_bytes: usize) -> String {
    if name.len() <= max_bytes && !name.contains('\0') {
        return name.to_string();
    }
    let hash = Sha256::digest(name.as_bytes());
    let suffix = format!(
        "_{:02x}{:02x}{:02x}{:02x}",
        hash[0], hash[1], hash[2], hash[3]
    );
    let budget = max_bytes.saturating_sub(suffix.len());
    let mut prefix = String::with_capacity(max_bytes);
    for c in name.chars() {
        let c = if c == '\0' { '_' } else { c };
        if prefix.len() + c.len_utf8() > budget {
            break;
        }
        prefix.push(c);
    }
    prefix + &suffix
}

/// `name` as a quoted SQL identifier: wrapped in `"` with inner quotes doubled,
/// so no name can end the identifier early (PostgreSQL and SQLite agree on this).
pub fn quote(name: &str) -> String {
    let mut quoted = String::with_capacity(name.len() + 2);
    quoted.push('"');
    for c in name.chars() {
        if c == '"' {
            quoted.push('"');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

/// A PostgreSQL identifier: fitted to 63 bytes, then quoted.
pub fn pg(name: &str) -> String {
    quote(&fit(name, POSTGRES_MAX_IDENTIFIER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_quotes_so_names_cannot_escape() {
        assert_eq!(
            quote(r#""); DROP TABLE x; --"#),
            r#""""); DROP TABLE x; --""#
        );
        assert_eq!(quote("a.b c"), r#""a.b c""#);
    }

    #[test]
    fn long_names_are_cut_at_char_boundaries_and_stay_distinct() {
        let a = "é".repeat(150) + "a";
        let b = "é".repeat(150) + "b";
        let (fa, fb) = (fit(&a, 63), fit(&b, 63));
        assert!(fa.len() <= 63 && fb.len() <= 63, "{fa}");
        assert_ne!(fa, fb);
        assert_eq!(fit(&a, 63), fa, "deterministic");
        assert_eq!(fit("short", 63), "short");
        assert!(!fit("nul\0byte", 63).contains('\0'));
    }
}
