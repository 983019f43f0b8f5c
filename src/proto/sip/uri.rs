//! SIP methods, URIs (`sip:`, `sips:`, `tel:` and opaque other schemes) and `name-addr` / `addr-spec` values
//! (From, To, Contact, Record-Route, Route).
//!
//! A `sip:`/`sips:` URI is validated by `ezk_sip_types::uri::SipUri` (user/password character sets, `hostport`
//! including IPv6 references and the port range, parameter and header character sets), after our own check that
//! the URI is printable ASCII (ezk accepts any Unicode alphanumeric). The components we expose are then cut
//! from the raw text by our own code, because ezk's `Params` can't be iterated in order and percent-decodes
//! into UTF-8 only. Display names are parsed here, not by ezk: ezk's quoted-string lexer does not accept the
//! `\\` quoted-pair (RFC 4475 wsinv) and its unquoted display names accept non-token text (RFC 4475 baddn).

use std::fmt;
use std::str::FromStr;

use super::grammar::{
    find_param, is_token, is_token_byte, is_ws, parse_params, percent_decode, quoted_len, trim_ws, trim_ws_start,
    unquote, write_params,
};

/// A SIP method. Methods are case-sensitive (RFC 3261 §7.1): `invite` is an extension method, not INVITE.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Options,
    Info,
    Register,
    Update,
    Prack,
    Subscribe,
    Notify,
    Refer,
    Message,
    Publish,
    Extension(Box<str>),
}

impl Method {
    pub fn as_str(&self) -> &str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Options => "OPTIONS",
            Method::Info => "INFO",
            Method::Register => "REGISTER",
            Method::Update => "UPDATE",
            Method::Prack => "PRACK",
            Method::Subscribe => "SUBSCRIBE",
            Method::Notify => "NOTIFY",
            Method::Refer => "REFER",
            Method::Message => "MESSAGE",
            Method::Publish => "PUBLISH",
            Method::Extension(s) => s,
        }
    }

    /// Maps a method name to a `Method`, case-sensitively. Does not check that `s` is a token: the message
    /// parser does that before calling this.
    pub fn parse(s: &str) -> Method {
        match s {
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "OPTIONS" => Method::Options,
            "INFO" => Method::Info,
            "REGISTER" => Method::Register,
            "UPDATE" => Method::Update,
            "PRACK" => Method::Prack,
            "SUBSCRIBE" => Method::Subscribe,
            "NOTIFY" => Method::Notify,
            "REFER" => Method::Refer,
            "MESSAGE" => Method::Message,
            "PUBLISH" => Method::Publish,
            other => Method::Extension(other.into()),
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// URI scheme. Schemes are case-insensitive; `Other` holds the scheme lower-cased.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    Sip,
    Sips,
    Tel,
    Other(Box<str>),
}

impl Scheme {
    pub fn as_str(&self) -> &str {
        match self {
            Scheme::Sip => "sip",
            Scheme::Sips => "sips",
            Scheme::Tel => "tel",
            Scheme::Other(s) => s,
        }
    }
}

/// A URI as received.
///
/// * `sip:`/`sips:` — `user` is the percent-decoded user part (without any password), `host` the host as written
///   (an IPv6 reference keeps its brackets), `params` the URI parameters in order, names and values
///   percent-decoded. URI headers (`?...`) are not broken out; see [`Uri::has_headers`].
/// * `tel:` — `user` is the percent-decoded telephone-subscriber (e.g. `+15550100`), `host` is empty, `params`
///   the parameters (`phone-context`, ...).
/// * any other scheme — opaque: only `scheme` and `raw` are meaningful (`host` empty, `user` None).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uri {
    pub scheme: Scheme,
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    pub params: Vec<(String, Option<String>)>,
    pub raw: String,
}

impl Uri {
    /// Parses an absolute URI with no surrounding `<>` or white space. `None` if it is malformed.
    pub fn parse(s: &str) -> Option<Uri> {
        if s.is_empty() || !s.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return None;
        }
        let colon = s.find(':')?;
        let scheme = &s[..colon];
        let rest = &s[colon + 1..];
        let mut sb = scheme.bytes();
        if !sb.next().is_some_and(|b| b.is_ascii_alphabetic())
            || !sb.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        {
            return None;
        }
        if rest.is_empty() {
            return None;
        }
        let lower = scheme.to_ascii_lowercase();
        match lower.as_str() {
            "sip" | "sips" => parse_sip(s, rest, lower == "sips"),
            "tel" => parse_tel(s, rest),
            _ => Some(Uri {
                scheme: Scheme::Other(lower.into()),
                user: None,
                host: String::new(),
                port: None,
                params: Vec::new(),
                raw: s.to_owned(),
            }),
        }
    }

    /// First parameter named `name` (case-insensitive): `Some(None)` for a parameter without value.
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        find_param(&self.params, name)
    }

    /// True if a `sip:`/`sips:` URI carries URI headers (`?name=value`), which are not allowed in a
    /// Request-URI (RFC 3261 §19.1.1).
    pub fn has_headers(&self) -> bool {
        match self.scheme {
            Scheme::Sip | Scheme::Sips => {
                let rest = self.raw.split_once(':').map_or("", |(_, r)| r);
                let after_user = rest.split_once('@').map_or(rest, |(_, h)| h);
                after_user.contains('?')
            }
            _ => false,
        }
    }

    pub fn is_sip(&self) -> bool {
        matches!(self.scheme, Scheme::Sip | Scheme::Sips)
    }
}

impl fmt::Display for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// Splits `;a=b;c` URI parameters (no LWS allowed inside a URI), percent-decoding names and values.
fn uri_params(s: &str) -> Option<Vec<(String, Option<String>)>> {
    let mut out = Vec::new();
    if s.is_empty() {
        return Some(out);
    }
    for p in s.strip_prefix(';')?.split(';') {
        let (n, v) = match p.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (p, None),
        };
        if n.is_empty() || v.is_some_and(str::is_empty) {
            return None;
        }
        let v = match v {
            Some(v) => Some(percent_decode(v)?),
            None => None,
        };
        out.push((percent_decode(n)?, v));
    }
    Some(out)
}

fn parse_sip(raw: &str, rest: &str, sips: bool) -> Option<Uri> {
    // Grammar check by ezk (see the module comment for what it does and does not check).
    let ezk = ezk_sip_types::uri::SipUri::from_str(raw).ok()?;
    let (userinfo, hostpart) = match rest.split_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    };
    let user = match userinfo {
        Some(u) => {
            let user = u.split_once(':').map_or(u, |(user, _password)| user);
            if user.is_empty() {
                return None;
            }
            Some(percent_decode(user)?)
        }
        None => None,
    };
    let before_headers = hostpart.split_once('?').map_or(hostpart, |(b, _)| b);
    let hp_end = before_headers.find(';').unwrap_or(before_headers.len());
    let hostport = &before_headers[..hp_end];
    let host = match hostport.strip_prefix('[') {
        Some(v6) => format!("[{}]", v6.split_once(']')?.0),
        None => hostport.split_once(':').map_or(hostport, |(h, _)| h).to_owned(),
    };
    if host.is_empty() {
        return None;
    }
    if let Some(h) = hostpart.split_once('?').map(|(_, h)| h) {
        // hname "=" hvalue pairs; only validated for escapes here.
        percent_decode(h)?;
    }
    Some(Uri {
        scheme: if sips { Scheme::Sips } else { Scheme::Sip },
        user,
        host,
        port: ezk.host_port.port,
        params: uri_params(&before_headers[hp_end..])?,
        raw: raw.to_owned(),
    })
}

fn parse_tel(raw: &str, rest: &str) -> Option<Uri> {
    let (number, params) = match rest.find(';') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let ok = |b: u8| b.is_ascii_hexdigit() || matches!(b, b'+' | b'-' | b'.' | b'(' | b')' | b'*' | b'#' | b'%');
    if number.is_empty() || !number.bytes().all(ok) {
        return None;
    }
    Some(Uri {
        scheme: Scheme::Tel,
        user: Some(percent_decode(number)?),
        host: String::new(),
        port: None,
        params: uri_params(params)?,
        raw: raw.to_owned(),
    })
}

/// One `name-addr` or `addr-spec` with its header parameters, as found in From, To, Contact, Route and
/// Record-Route.
///
/// `display_name` is unquoted and unescaped (`"J Rosenberg \\\""` gives `J Rosenberg \"`); `params` are the
/// header parameters (after `>`, or after an `addr-spec`), kept as received — a quoted value keeps its quotes;
/// `raw` is the whole value as received (unfolded, trimmed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameAddr {
    pub display_name: Option<String>,
    pub uri: Uri,
    pub params: Vec<(String, Option<String>)>,
    pub raw: String,
}

impl NameAddr {
    /// The `tag` parameter, if any.
    pub fn tag(&self) -> Option<&str> {
        self.param("tag").flatten()
    }

    /// First header parameter named `name` (case-insensitive): `Some(None)` for a parameter without value.
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        find_param(&self.params, name)
    }

    /// Parses one value (already split from a comma-separated list). `None` if malformed.
    ///
    /// Rules (RFC 3261 §20.10, §25.1): a display name is a quoted string or a sequence of tokens separated by
    /// LWS; the URI inside `<>` may not have white space around it; an `addr-spec` (no `<>`) ends at the first
    /// `;` or white space and may not contain `?` or `,` — everything after it is header parameters.
    pub fn parse(s: &str) -> Option<NameAddr> {
        let s = trim_ws(s);
        let (display_name, uri_str, rest) = if s.starts_with('"') {
            let qlen = quoted_len(s)?;
            let after = trim_ws_start(&s[qlen..]);
            let inner = after.strip_prefix('<')?;
            let (uri, rest) = inner.split_once('>')?;
            (Some(unquote(&s[..qlen])), uri, rest)
        } else if let Some(lt) = s.find('<') {
            let dn = trim_ws(&s[..lt]);
            // *(token LWS); bytes >= 0x80 (UTF-8 letters) are tolerated in the words, as carriers send
            // unquoted `José`: they are unambiguous, unlike the separators RFC 4475 baddn tests.
            let word_ok = |w: &str| w.bytes().all(|b| is_token_byte(b) || b >= 0x80);
            if !dn.is_empty() && !dn.split([' ', '\t']).filter(|w| !w.is_empty()).all(word_ok) {
                return None;
            }
            let (uri, rest) = s[lt + 1..].split_once('>')?;
            ((!dn.is_empty()).then(|| dn.to_owned()), uri, rest)
        } else {
            let end = s.bytes().position(|b| b == b';' || is_ws(b)).unwrap_or(s.len());
            let uri = &s[..end];
            if uri.contains(['?', ',', '<', '>', '"']) {
                return None;
            }
            (None, uri, &s[end..])
        };
        let uri = Uri::parse(uri_str)?;
        let params = parse_params(rest)?;
        Some(NameAddr { display_name, uri, params, raw: s.to_owned() })
    }

    /// Writes `["display"] <uri>;params` (display name re-quoted).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(self.raw.len() + 8);
        if let Some(dn) = &self.display_name {
            out.push('"');
            for c in dn.chars() {
                if c == '"' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push_str("\" ");
        }
        out.push('<');
        out.push_str(&self.uri.raw);
        out.push('>');
        write_params(&mut out, &self.params);
        out
    }
}

impl fmt::Display for NameAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// True if `s` is a valid method token.
pub(crate) fn is_method_token(s: &str) -> bool {
    is_token(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_is_case_sensitive() {
        assert_eq!(Method::parse("INVITE"), Method::Invite);
        assert_eq!(Method::parse("invite"), Method::Extension("invite".into()));
        assert_eq!(Method::parse("INVITEX"), Method::Extension("INVITEX".into()));
        assert_eq!(Method::parse("PRACK").as_str(), "PRACK");
    }

    #[test]
    fn sip_uri_components() {
        let u = Uri::parse("sip:alice@[2001:db8::10]:5070;transport=tcp;lr").unwrap();
        assert_eq!(u.scheme, Scheme::Sip);
        assert_eq!(u.user.as_deref(), Some("alice"));
        assert_eq!(u.host, "[2001:db8::10]");
        assert_eq!(u.port, Some(5070));
        assert_eq!(u.param("transport"), Some(Some("tcp")));
        assert_eq!(u.param("LR"), Some(None));
        assert!(!u.has_headers());

        let u = Uri::parse("SIPS:+15550100;npdi@Carrier.example:5061;user=phone").unwrap();
        assert_eq!(u.scheme, Scheme::Sips);
        assert_eq!(u.user.as_deref(), Some("+15550100;npdi"));
        assert_eq!(u.host, "Carrier.example");

        // Carrier-style URIs: number portability and trunk parameters in the user part, IPv6 maddr.
        for ok in [
            "sip:+14155550199;npdi;rn=+14155550000@198.51.100.20;user=phone",
            "sip:1234@host.example.com;tgrp=trunk-1;trunk-context=example.com",
            "sip:anonymous@anonymous.invalid",
            "sip:gw.example.com.:5060;maddr=[2001:db8::1];lr",
        ] {
            assert!(Uri::parse(ok).is_some(), "{ok}");
        }
        let u = Uri::parse("sip:+14155550199;npdi;rn=+14155550000@198.51.100.20;user=phone").unwrap();
        assert_eq!(u.user.as_deref(), Some("+14155550199;npdi;rn=+14155550000"));
        assert_eq!(u.params, vec![("user".to_owned(), Some("phone".to_owned()))]);

        let u = Uri::parse("sip:user:secret@host?Subject=hi").unwrap();
        assert_eq!(u.user.as_deref(), Some("user"));
        assert!(u.has_headers());
    }

    #[test]
    fn bad_uris() {
        for bad in [
            "",
            "sip:",
            "sip:user@",
            "sip:us er@example.com",
            "sip:user@exämple.com",
            "sip:user@example.com:99999",
            "sip:user@host;;x",
            "sip:user@host;",
            "sip:%zz@host",
            "<sip:user@host>",
            "1sip:x",
            "user@host",
            "tel:",
            "tel:+1 555",
        ] {
            assert!(Uri::parse(bad).is_none(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn tel_and_other() {
        let u = Uri::parse("tel:+1-555-0100;phone-context=example.com").unwrap();
        assert_eq!(u.scheme, Scheme::Tel);
        assert_eq!(u.user.as_deref(), Some("+1-555-0100"));
        assert_eq!(u.param("phone-context"), Some(Some("example.com")));
        let u = Uri::parse("soap.beep://192.0.2.103:3002").unwrap();
        assert_eq!(u.scheme, Scheme::Other("soap.beep".into()));
        assert_eq!(u.raw, "soap.beep://192.0.2.103:3002");
    }

    #[test]
    fn name_addr_forms() {
        let n = NameAddr::parse("\"Bob \\\"B\\\"\" <sip:bob@biloxi.example.com>;tag=a6c85cf").unwrap();
        assert_eq!(n.display_name.as_deref(), Some("Bob \"B\""));
        assert_eq!(n.tag(), Some("a6c85cf"));
        assert_eq!(n.uri.host, "biloxi.example.com");

        let n = NameAddr::parse("Alice Smith<sip:alice@atlanta.example.com>").unwrap();
        assert_eq!(n.display_name.as_deref(), Some("Alice Smith"));
        let n = NameAddr::parse("Jos\u{e9} M\u{fc}ller <sip:jose@example.com>;tag=1").unwrap();
        assert_eq!(n.display_name.as_deref(), Some("Jos\u{e9} M\u{fc}ller"));

        let n = NameAddr::parse("sip:+1972@gw1.example.net;unknownparam").unwrap();
        assert!(n.uri.params.is_empty());
        assert_eq!(n.param("unknownparam"), Some(None));

        for bad in [
            "Bell, Alexander <sip:a@b>",
            "\"unterminated <sip:a@b>",
            "< sip:a@b >",
            "sip:a@b?Route=x",
            "<sip:a@b",
            "<sip:a@b>;;",
        ] {
            assert!(NameAddr::parse(bad).is_none(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn render_requotes() {
        let n = NameAddr::parse("\"a\\\\b\" <sip:x@y>;tag=1").unwrap();
        assert_eq!(n.render(), "\"a\\\\b\" <sip:x@y>;tag=1");
    }
}
