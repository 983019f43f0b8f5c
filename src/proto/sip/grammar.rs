//! Character classes and small lexers of the RFC 3261 §25 grammar shared by the SIP parsers: tokens, linear
//! white space, quoted strings, comma-separated lists and `;name=value` parameter lists.
//!
//! Everything here works on already unfolded header values (folding is removed when the header section is
//! split into lines), so LWS is just SP / HTAB.

/// `token` characters of RFC 3261 §25.1.
pub(crate) fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~')
}

/// True if `s` is a non-empty RFC 3261 `token`.
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token_byte)
}

pub(crate) fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Trims SP / HTAB (not other Unicode white space) from both ends.
pub(crate) fn trim_ws(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

pub(crate) fn trim_ws_start(s: &str) -> &str {
    s.trim_start_matches([' ', '\t'])
}

/// Byte length of the quoted string that `s` starts with (including both quotes), honouring `quoted-pair`
/// escapes. `None` if `s` does not start with `"` or the string is not terminated.
pub(crate) fn quoted_len(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    if b.first() != Some(&b'"') {
        return None;
    }
    let mut i = 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// Removes the quotes and `quoted-pair` escapes of a complete quoted string (as measured by [`quoted_len`]).
pub(crate) fn unquote(q: &str) -> String {
    let inner = q.strip_prefix('"').and_then(|s| s.strip_suffix('"')).unwrap_or(q);
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Splits a header value at the commas that separate list elements: commas inside quoted strings and inside
/// `<...>` do not count. Elements are trimmed. `None` if a quoted string or `<` is not terminated.
pub(crate) fn split_commas(s: &str) -> Option<Vec<&str>> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    let mut in_angle = false;
    while i < b.len() {
        match b[i] {
            b'"' => {
                let len = quoted_len(&s[i..])?;
                i += len;
                continue;
            }
            b'<' => in_angle = true,
            b'>' => in_angle = false,
            b',' if !in_angle => {
                out.push(trim_ws(&s[start..i]));
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if in_angle {
        return None;
    }
    out.push(trim_ws(&s[start..]));
    Some(out)
}

/// Characters of a generic parameter value that is not a quoted string: `token / host` (the host form adds
/// `:`, `[` and `]` for IPv6 addresses).
fn is_gen_value_byte(b: u8) -> bool {
    is_token_byte(b) || matches!(b, b':' | b'[' | b']')
}

/// Parses a header parameter list `*( SEMI generic-param )` with LWS allowed around `;` and `=`
/// (RFC 3261 §25.1 `SEMI` and `EQUAL`). Names and values are kept exactly as received; a quoted value keeps
/// its quotes so that it can be written back unchanged. Empty names (`;;`), a `=` without a value, or any
/// other character are errors.
pub(crate) fn parse_params(s: &str) -> Option<Vec<(String, Option<String>)>> {
    let mut out = Vec::new();
    let mut rest = trim_ws_start(s);
    while !rest.is_empty() {
        rest = trim_ws_start(rest.strip_prefix(';')?);
        let name_len = rest.bytes().take_while(|b| is_token_byte(*b)).count();
        if name_len == 0 {
            return None;
        }
        let name = &rest[..name_len];
        rest = trim_ws_start(&rest[name_len..]);
        let value = if let Some(after_eq) = rest.strip_prefix('=') {
            let v = trim_ws_start(after_eq);
            let len = if v.starts_with('"') {
                quoted_len(v)?
            } else {
                v.bytes().take_while(|b| is_gen_value_byte(*b)).count()
            };
            if len == 0 {
                return None;
            }
            rest = trim_ws_start(&v[len..]);
            Some(v[..len].to_owned())
        } else {
            None
        };
        out.push((name.to_owned(), value));
    }
    Some(out)
}

/// Case-insensitive lookup of a parameter by name.
pub(crate) fn find_param<'a>(params: &'a [(String, Option<String>)], name: &str) -> Option<Option<&'a str>> {
    params.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_deref())
}

/// Appends `;name[=value]` for each parameter.
pub(crate) fn write_params(out: &mut String, params: &[(String, Option<String>)]) {
    for (n, v) in params {
        out.push(';');
        out.push_str(n);
        if let Some(v) = v {
            out.push('=');
            out.push_str(v);
        }
    }
}

/// Percent-decodes `s` (RFC 3261 `escaped`). `None` if a `%` is not followed by two hex digits. Decoded bytes
/// that are not UTF-8 are replaced with U+FFFD.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_owned());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hi = b.get(i + 1).and_then(|c| (*c as char).to_digit(16))?;
            let lo = b.get(i + 2).and_then(|c| (*c as char).to_digit(16))?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// 64-bit FNV-1a, used to derive deterministic tags (no clock or RNG in sans-IO code).
pub(crate) fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0xff)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commas_respect_quotes_and_angles() {
        assert_eq!(
            split_commas(r#""a, \"b" <sip:x@y;p=1,2>, <sip:z>"#).unwrap(),
            vec![r#""a, \"b" <sip:x@y;p=1,2>"#, "<sip:z>"]
        );
        assert!(split_commas(r#""open, <sip:x>"#).is_none());
    }

    #[test]
    fn params_with_lws() {
        let p = parse_params(" ;   tag    = 1918181833n ; q = 0.33;lr;x=\"a;b\"").unwrap();
        assert_eq!(
            p,
            vec![
                ("tag".to_owned(), Some("1918181833n".to_owned())),
                ("q".to_owned(), Some("0.33".to_owned())),
                ("lr".to_owned(), None),
                ("x".to_owned(), Some("\"a;b\"".to_owned())),
            ]
        );
        assert!(parse_params(";;").is_none());
        assert!(parse_params(";a=").is_none());
        assert!(parse_params("x").is_none());
    }

    #[test]
    fn unquoting() {
        assert_eq!(unquote(r#""J Rosenberg \\\"""#), r#"J Rosenberg \""#);
        assert_eq!(quoted_len(r#""a\"b" rest"#), Some(6));
        assert_eq!(quoted_len(r#""unterminated"#), None);
        assert_eq!(quoted_len("\"ends in backslash\\"), None);
    }

    #[test]
    fn percent() {
        assert_eq!(percent_decode("%75se%72").unwrap(), "user");
        assert_eq!(percent_decode("a%00b").unwrap(), "a\0b");
        assert!(percent_decode("%Z1").is_none());
        assert!(percent_decode("%4").is_none());
    }
}
