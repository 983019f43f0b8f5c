//! Tests of the SIP message facade: the RFC 4475 table (every torture message, one explicit row each), the
//! RFC 3261 §24.2 examples, serialisation round trips, stream framing, and property tests that nothing panics.

use std::panic::{AssertUnwindSafe, catch_unwind};

use super::*;

fn fixture(dir: &str, name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{dir}/{name}.dat", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn parse(bytes: &[u8]) -> Result<Message, ParseError> {
    parse_message(bytes, &Limits::default())
}

fn req(m: &Message) -> &Request {
    match m {
        Message::Request(r) => r,
        Message::Response(_) => panic!("expected a request"),
    }
}

fn resp(m: &Message) -> &Response {
    match m {
        Message::Response(r) => r,
        Message::Request(_) => panic!("expected a response"),
    }
}

fn p(n: &str, v: Option<&str>) -> (String, Option<String>) {
    (n.to_owned(), v.map(str::to_owned))
}

/// What RFC 4475 (read per message) and our decisions say must happen to each torture message.
enum Expect {
    /// Parses. `check` is the status `check_request` must reject with (None: accepted; responses: None).
    Valid { check: Option<u16>, fields: fn(&Message) },
    /// Fails with `kind`; `answer` is the status of the stateless answer, or None if there must be none.
    Invalid { kind: ParseErrorKind, answer: Option<u16> },
}

use Expect::{Invalid, Valid};
use ParseErrorKind as K;

fn rfc4475_table() -> Vec<(&'static str, Expect)> {
    vec![
        // §3.1.1.1 A short tortuous INVITE.
        (
            "wsinv",
            Valid {
                check: None,
                fields: |m| {
                    let r = req(m);
                    assert_eq!(r.method, Method::Invite);
                    assert_eq!(r.uri.user.as_deref(), Some("vivekg"));
                    assert_eq!(r.uri.params, vec![p("unknownparam", None)]);
                    assert_eq!(r.call_id, "wsinv.ndaksdj@192.0.2.1");
                    assert_eq!(r.via.len(), 3);
                    assert_eq!((r.via[0].transport.as_str(), r.via[0].host.as_str()), ("UDP", "192.0.2.2"));
                    assert_eq!(r.via[0].branch.as_deref(), Some("390skdjuw"));
                    assert_eq!((r.via[1].transport.as_str(), r.via[1].host.as_str()), ("TCP", "spindle.example.com"));
                    assert_eq!(r.via[1].branch.as_deref(), Some("z9hG4bK9ikj8"));
                    assert_eq!((r.via[2].transport.as_str(), r.via[2].host.as_str()), ("UDP", "192.168.255.111"));
                    assert_eq!(r.via[2].branch.as_deref(), Some("z9hG4bK30239"));
                    assert_eq!(r.to.tag(), Some("1918181833n"));
                    assert_eq!(r.from.display_name.as_deref(), Some("J Rosenberg \\\""));
                    assert_eq!(r.from.tag(), Some("98asjd8"));
                    assert_eq!(r.max_forwards, Some(68));
                    assert_eq!(r.cseq, CSeq { seq: 9, method: Method::Invite });
                    assert_eq!(r.contact.len(), 1);
                    assert_eq!(r.contact[0].display_name.as_deref(), Some("Quoted string \"\""));
                    assert_eq!(
                        r.contact[0].params,
                        vec![p("newparam", Some("newvalue")), p("secondparam", None), p("q", Some("0.33"))]
                    );
                    assert_eq!(r.header("Subject"), Some(""));
                    assert_eq!(r.header("s"), Some(""));
                    assert_eq!(r.header("newfangledheader"), Some("newfangled value continued newfangled value"));
                    assert_eq!(r.header("UnknownHeaderWithUnusualValue"), Some(";;,,;;,;"));
                    assert_eq!(
                        r.header("Route"),
                        Some("<sip:services.example.com;lr;unknownwith=value;unknown-no-value>")
                    );
                    assert_eq!(r.headers_named("Via").count(), 2);
                    assert_eq!(r.content_type.as_deref(), Some("application/sdp"));
                    assert_eq!(r.body.len(), 150);
                },
            },
        ),
        // §3.1.1.2 Wide range of valid characters.
        (
            "intmeth",
            Valid {
                check: None,
                fields: |m| {
                    let r = req(m);
                    let meth = "!interesting-Method0123456789_*+`.%indeed'~";
                    assert_eq!(r.method, Method::Extension(meth.into()));
                    assert_eq!(r.cseq.method.as_str(), meth);
                    assert_eq!(r.cseq.seq, 139122385);
                    assert_eq!(r.uri.user.as_deref(), Some("1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"));
                    assert_eq!(r.uri.host, "example.com");
                    assert_eq!(r.via[0].branch.as_deref(), Some("z9hG4bK-.!%66*_+`'~"), "Via params are never decoded");
                    assert_eq!(r.to.display_name.as_deref(), Some("BEL:\x07 NUL:\0 DEL:\x7f"));
                    assert_eq!(r.from.display_name.as_deref(), Some("token1~` token2'+_ token3*%!.-"));
                    assert_eq!(r.from.tag(), Some("_token~1'+`*%!-."));
                    assert_eq!(r.from.params[0].0, "fromParam''~+*_!.-%");
                    assert_eq!(
                        r.from.params[0].1.as_deref(),
                        Some("\"\u{0440}\u{0430}\u{0431}\u{043e}\u{0442}\u{0430}\u{044e}\u{0449}\u{0438}\u{0439}\"")
                    );
                    assert_eq!(r.call_id, "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{");
                    assert_eq!(r.max_forwards, Some(255));
                    assert_eq!(r.header("extensionHeader-!.%*+_`'~"), Some("\u{feff}\u{5927}\u{505c}\u{96fb}"));
                    assert!(r.body.is_empty());
                },
            },
        ),
        // §3.1.1.3 Valid use of the % escaping mechanism.
        (
            "esc01",
            Valid {
                check: None,
                fields: |m| {
                    let r = req(m);
                    assert_eq!(r.uri.user.as_deref(), Some("sips:user@example.com"));
                    assert_eq!(r.uri.host, "example.net");
                    assert_eq!(r.to.uri.user.as_deref(), Some("user"));
                    assert_eq!(r.from.uri.user.as_deref(), Some("I have spaces"));
                    assert_eq!(r.call_id, "esc01.239409asdfakjkn23onasd0-3234");
                    assert_eq!(r.contact[0].uri.user.as_deref(), Some("caller"));
                    assert_eq!(r.contact[0].uri.params, vec![p("lr", None), p("name", Some("value%41"))]);
                    assert_eq!(r.content_type.as_deref(), Some("application/sdp"));
                    assert_eq!(r.body.len(), 150);
                },
            },
        ),
        // §3.1.1.4 Escaped nulls in URIs.
        (
            "escnull",
            Valid {
                check: None,
                fields: |m| {
                    let r = req(m);
                    assert_eq!(r.to.uri.user.as_deref(), Some("null-\0-null"));
                    assert_eq!(r.from.uri.user.as_deref(), Some("null-\0-null"));
                    let users: Vec<_> = r.contact.iter().map(|c| c.uri.user.as_deref()).collect();
                    assert_eq!(users, vec![Some("\0"), Some("\0\0")]);
                },
            },
        ),
        // §3.1.1.5 Use of % when it is not an escape.
        (
            "esc02",
            Valid {
                check: None,
                fields: |m| {
                    let r = req(m);
                    assert_eq!(r.method, Method::Extension("RE%47IST%45R".into()));
                    assert_eq!(r.cseq.method, Method::Extension("RE%47IST%45R".into()));
                    assert_eq!(r.to.display_name.as_deref(), Some("%Z%45"));
                    assert_eq!(r.via[0].transport, "TCP");
                    assert_eq!(r.via[0].branch.as_deref(), Some("z9hG4bK209%fzsnel234"));
                    let hosts: Vec<_> = r.contact.iter().map(|c| c.uri.host.as_str()).collect();
                    assert_eq!(hosts, vec!["host1.example.com", "host3.example.com"], "C%6Fntact is not Contact");
                    assert_eq!(r.header("C%6Fntact"), Some("<sip:alias2@host2.example.com>"));
                },
            },
        ),
        // §3.1.1.6 No LWS between display name and <.
        (
            "lwsdisp",
            Valid {
                check: None,
                fields: |m| {
                    let r = req(m);
                    assert_eq!(r.from.display_name.as_deref(), Some("caller"));
                    assert_eq!(r.from.tag(), Some("323"));
                },
            },
        ),
        // §3.1.1.7 Long values in header fields.
        (
            "longreq",
            Valid {
                check: None,
                fields: |m| {
                    let r = req(m);
                    assert_eq!(r.via.len(), 34);
                    assert_eq!(r.via[0].host, "sip33.example.com");
                    assert_eq!(r.via[33].received.as_deref(), Some("192.0.2.5"));
                    assert!(r.via[33].branch.as_deref().is_some_and(|b| b.ends_with("longbranchvalue")));
                    assert!(
                        r.to.display_name.as_deref().is_some_and(|d| d.starts_with("I have a user name of extreme"))
                    );
                    assert_eq!(r.to.uri.port, Some(6000));
                    assert!(r.from.tag().is_some_and(|t| t.starts_with("12982982982")));
                    assert!(r.call_id.starts_with("longreq.onereallyreally"));
                    assert_eq!(r.cseq.seq, 3882340);
                    assert_eq!(r.body.len(), 150);
                },
            },
        ),
        // §3.1.1.8 Extra trailing octets in a UDP datagram: the INVITE after the REGISTER is ignored.
        (
            "dblreq",
            Valid {
                check: None,
                fields: |m| {
                    let r = req(m);
                    assert_eq!(r.method, Method::Register);
                    assert_eq!(r.call_id, "dblreq.0ha0isndaksdj99sdfafnl3lk233412");
                    assert!(r.body.is_empty());
                },
            },
        ),
        // §3.1.1.9 Semicolon-separated parameters in the URI user part.
        (
            "semiuri",
            Valid {
                check: None,
                fields: |m| {
                    let r = req(m);
                    assert_eq!(r.uri.user.as_deref(), Some("user;par=u@example.net"));
                    assert_eq!(r.uri.host, "example.com");
                    assert!(r.uri.params.is_empty());
                    assert_eq!(
                        r.header("Accept"),
                        Some(
                            "application/sdp, application/pkcs7-mime, multipart/mixed, multipart/signed, message/sip, message/sipfrag"
                        )
                    );
                },
            },
        ),
        // §3.1.1.10 Varied and unknown transport types.
        (
            "transports",
            Valid {
                check: None,
                fields: |m| {
                    let t: Vec<_> = req(m).via.iter().map(|v| v.transport.as_str()).collect();
                    assert_eq!(t, vec!["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]);
                    assert_eq!(req(m).call_id, "transports.kijh4akdnaqjkwendsasfdj");
                },
            },
        ),
        // §3.1.1.11 Multipart MIME message (binary body, bare LFs inside it).
        (
            "mpart01",
            Valid {
                check: None,
                fields: |m| {
                    let r = req(m);
                    assert_eq!(r.method, Method::Message);
                    assert_eq!(r.content_type.as_deref(), Some("multipart/mixed"));
                    assert_eq!(r.body.len(), 553);
                    assert!(r.body.ends_with(b"--7a9cbec02ceef655--\r\n"));
                    assert_eq!(r.via[0].rport, Some(None));
                    assert!(r.sdp().is_none());
                },
            },
        ),
        // §3.1.1.12 Unusual reason phrase.
        (
            "unreason",
            Valid {
                check: None,
                fields: |m| {
                    let r = resp(m);
                    assert_eq!(r.status, 200);
                    assert!(r.reason.starts_with("= 2**3 * 5**2 \u{043d}\u{043e}"));
                    assert_eq!(r.body.len(), 154);
                },
            },
        ),
        // §3.1.1.13 Empty reason phrase.
        (
            "noreason",
            Valid {
                check: None,
                fields: |m| {
                    let r = resp(m);
                    assert_eq!(r.status, 100);
                    assert_eq!(r.reason, "");
                    assert_eq!(r.to.tag(), Some("902jndnke3"));
                },
            },
        ),
        // §3.1.2.1 Extraneous header field separators (Via `;;,;,,`, Contact `;;;;`).
        ("badinv01", Invalid { kind: K::BadHeader("Via"), answer: Some(400) }),
        // §3.1.2.2 Content-Length larger than the message.
        ("clerr", Invalid { kind: K::ContentLengthMismatch, answer: Some(400) }),
        // §3.1.2.3 Negative Content-Length.
        ("ncl", Invalid { kind: K::BadHeader("Content-Length"), answer: Some(400) }),
        // §3.1.2.4 Request scalar fields with overlarge values: the CSeq is checked first.
        ("scalar02", Invalid { kind: K::BadHeader("CSeq"), answer: Some(400) }),
        // §3.1.2.5 Response scalar fields with overlarge values: dropped.
        ("scalarlg", Invalid { kind: K::BadHeader("CSeq"), answer: None }),
        // §3.1.2.6 Unterminated quoted string in display name.
        ("quotbal", Invalid { kind: K::BadHeader("To"), answer: Some(400) }),
        // §3.1.2.7 <> enclosing Request-URI.
        ("ltgtruri", Invalid { kind: K::BadUri, answer: Some(400) }),
        // §3.1.2.8 Malformed SIP Request-URI (embedded LWS).
        ("lwsruri", Invalid { kind: K::BadStartLine, answer: Some(400) }),
        // §3.1.2.9 Multiple SP separating Request-Line elements: rejected (RFC allows either).
        ("lwsstart", Invalid { kind: K::BadStartLine, answer: Some(400) }),
        // §3.1.2.10 SP characters at end of Request-Line: rejected (RFC allows either).
        ("trws", Invalid { kind: K::BadStartLine, answer: Some(400) }),
        // §3.1.2.11 Escaped headers in SIP Request-URI.
        ("escruri", Invalid { kind: K::BadUri, answer: Some(400) }),
        // §3.1.2.12 Invalid time zone in Date: accepted, we never interpret Date.
        (
            "baddate",
            Valid {
                check: None,
                fields: |m| {
                    let r = req(m);
                    assert_eq!(r.header("Date"), Some("Fri, 01 Jan 2010 16:00:00 EST"));
                    assert_eq!(r.body.len(), 150);
                },
            },
        ),
        // §3.1.2.13 Failure to enclose name-addr URI in <>.
        ("regbadct", Invalid { kind: K::BadHeader("Contact"), answer: Some(400) }),
        // §3.1.2.14 Spaces within addr-spec.
        ("badaspec", Invalid { kind: K::BadHeader("To"), answer: Some(400) }),
        // §3.1.2.15 Non-token characters in display name (and no empty line at the end).
        ("baddn", Invalid { kind: K::BadHeader("From"), answer: Some(400) }),
        // §3.1.2.16 Unknown protocol version.
        ("badvers", Invalid { kind: K::BadVersion, answer: Some(505) }),
        // §3.1.2.17 Start line and CSeq method mismatch.
        ("mismatch01", Invalid { kind: K::CSeqMethodMismatch, answer: Some(400) }),
        // §3.1.2.18 Unknown method with CSeq method mismatch.
        ("mismatch02", Invalid { kind: K::CSeqMethodMismatch, answer: Some(400) }),
        // §3.1.2.19 Overlarge response code: dropped.
        ("bigcode", Invalid { kind: K::BadStatusCode, answer: None }),
        // §3.2.1 Missing transaction identifier: parses; the transaction layer sees no RFC 3261 branch.
        (
            "badbranch",
            Valid {
                check: None,
                fields: |m| {
                    let v = &req(m).via[0];
                    assert_eq!(v.branch.as_deref(), Some("z9hG4bK"));
                    assert!(!v.has_rfc3261_branch());
                },
            },
        ),
        // §3.3.1 Missing required header fields: too broken to answer (no From, To or Call-ID).
        ("insuf", Invalid { kind: K::MissingHeader("Call-ID"), answer: None }),
        // §3.3.2 Request-URI with unknown scheme.
        (
            "unkscm",
            Valid {
                check: Some(416),
                fields: |m| {
                    let r = req(m);
                    assert_eq!(r.uri.scheme, Scheme::Other("nobodyknowsthisscheme".into()));
                    assert_eq!(r.uri.raw, "nobodyKnowsThisScheme:totallyopaquecontent");
                },
            },
        ),
        // §3.3.3 Request-URI with known but atypical scheme.
        (
            "novelsc",
            Valid {
                check: Some(416),
                fields: |m| {
                    assert_eq!(req(m).uri.scheme, Scheme::Other("soap.beep".into()));
                },
            },
        ),
        // §3.3.4 Unknown URI schemes in header fields: parses (a registrar would refuse it; we are not one).
        (
            "unksm2",
            Valid {
                check: None,
                fields: |m| {
                    let r = req(m);
                    assert_eq!(r.to.uri.scheme, Scheme::Other("isbn".into()));
                    assert_eq!(r.from.uri.scheme, Scheme::Other("http".into()));
                    assert_eq!(r.from.tag(), Some("3234233"));
                    assert_eq!(r.contact[0].uri.raw, "name:John_Smith");
                },
            },
        ),
        // §3.3.5 Proxy-Require and Require: 420 listing the Require option-tags only.
        (
            "bext01",
            Valid {
                check: Some(420),
                fields: |m| {
                    let e = check_request(req(m)).unwrap_err();
                    assert_eq!(
                        e.extra_headers,
                        vec![("Unsupported", "nothingSupportsThis, nothingSupportsThisEither".to_owned())]
                    );
                },
            },
        ),
        // §3.3.6 Unknown Content-Type.
        (
            "invut",
            Valid {
                check: Some(415),
                fields: |m| {
                    let e = check_request(req(m)).unwrap_err();
                    assert_eq!(e.extra_headers, vec![("Accept", "application/sdp".to_owned())]);
                    assert_eq!(req(m).content_type.as_deref(), Some("application/unknownformat"));
                },
            },
        ),
        // §3.3.7 Unknown authorization scheme: well formed.
        (
            "regaut01",
            Valid {
                check: None,
                fields: |m| {
                    assert_eq!(req(m).header("Authorization"), Some("NoOneKnowsThisScheme opaque-data=here"));
                },
            },
        ),
        // §3.3.8 Multiple values in single-value required fields.
        ("multi01", Invalid { kind: K::DuplicateHeader("Call-ID"), answer: Some(400) }),
        // §3.3.9 Multiple Content-Length values.
        ("mcl01", Invalid { kind: K::DuplicateHeader("Content-Length"), answer: Some(400) }),
        // §3.3.10 200 OK response with broadcast Via: well formed.
        (
            "bcast",
            Valid {
                check: None,
                fields: |m| {
                    let r = resp(m);
                    assert_eq!(r.via.len(), 2);
                    assert_eq!(r.via[1].host, "255.255.255.255");
                    assert_eq!(r.body.len(), 154);
                },
            },
        ),
        // §3.3.11 Max-Forwards of zero on OPTIONS: answered as the final recipient.
        (
            "zeromf",
            Valid {
                check: None,
                fields: |m| {
                    assert_eq!(req(m).max_forwards, Some(0));
                    assert_eq!(req(m).method, Method::Options);
                },
            },
        ),
        // §3.3.12 Contact with a parameter, no <>: a header parameter.
        (
            "cparam01",
            Valid {
                check: None,
                fields: |m| {
                    let c = &req(m).contact[0];
                    assert!(c.uri.params.is_empty());
                    assert_eq!(c.params, vec![p("unknownparam", None)]);
                    assert_eq!(c.uri.user.as_deref(), Some("+19725552222"));
                },
            },
        ),
        // §3.3.13 Contact with a parameter inside <>: a URI parameter.
        (
            "cparam02",
            Valid {
                check: None,
                fields: |m| {
                    let c = &req(m).contact[0];
                    assert_eq!(c.uri.params, vec![p("unknownparam", None)]);
                    assert!(c.params.is_empty());
                },
            },
        ),
        // §3.3.14 Escaped headers in a Contact URI (compact M:, L:0).
        (
            "regescrt",
            Valid {
                check: None,
                fields: |m| {
                    let r = req(m);
                    assert_eq!(r.contact.len(), 1);
                    assert!(r.contact[0].uri.has_headers());
                    assert_eq!(r.header("Content-Length"), Some("0"));
                },
            },
        ),
        // §3.3.15 Accept excluding SDP on an INVITE with SDP: fine (Accept is about responses).
        (
            "sdp01",
            Valid {
                check: None,
                fields: |m| {
                    let r = req(m);
                    assert_eq!(r.header("Accept"), Some("text/nobodyKnowsThis"));
                    assert_eq!(r.sdp().map(|s| s.len()), Some(150));
                },
            },
        ),
        // §3.4 RFC 2543 INVITE: no branch, no From tag, no Max-Forwards, no Content-Length (body = rest).
        (
            "inv2543",
            Valid {
                check: None,
                fields: |m| {
                    let r = req(m);
                    assert_eq!(r.via[0].branch, None);
                    assert_eq!(r.from.tag(), None);
                    assert_eq!(r.max_forwards, None);
                    assert_eq!(r.record_route.len(), 1);
                    assert_eq!(r.record_route[0].uri.param("maddr"), Some(Some("ss1.example.com")));
                    assert_eq!(r.uri.user.as_deref(), Some("UserB"));
                    assert!(r.body.starts_with(b"v=0\r\n") && r.body.ends_with(b"RTP/AVP 0\r\n"));
                },
            },
        ),
    ]
}

/// Header values of `name` (and its compact form) in raw message bytes, by an independent line scan.
fn raw_values(bytes: &[u8], names: &[&str]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .split("\r\n")
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| names.iter().any(|x| n.trim().eq_ignore_ascii_case(x)))
        .map(|(_, v)| v.trim().to_owned())
        .collect()
}

#[test]
fn rfc4475_torture_table() {
    let table = rfc4475_table();
    let dir = format!("{}/tests/fixtures/rfc4475", env!("CARGO_MANIFEST_DIR"));
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .expect("fixture dir")
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".dat").map(str::to_owned))
        .collect();
    on_disk.sort();
    let mut in_table: Vec<String> = table.iter().map(|(n, _)| (*n).to_owned()).collect();
    in_table.sort();
    assert_eq!(on_disk.len(), 49);
    assert_eq!(on_disk, in_table, "every RFC 4475 message has exactly one row");

    for (name, expect) in table {
        let bytes = fixture("rfc4475", name);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let parsed = parse(&bytes);
            let checked = parsed.as_ref().ok().and_then(|m| match m {
                Message::Request(r) => check_request(r).err(),
                Message::Response(_) => None,
            });
            let answer = parsed.as_ref().err().and_then(error_response);
            let _ = frame_stream(&bytes, &Limits::default());
            (parsed, checked, answer)
        }));
        let Ok((parsed, checked, answer)) = outcome else {
            panic!("{name}: panicked");
        };
        match expect {
            Valid { check, fields } => {
                let m = parsed.unwrap_or_else(|e| panic!("{name}: should parse, got {e:?}"));
                fields(&m);
                assert_eq!(checked.map(|r| r.status), check, "{name}: check_request");
            }
            Invalid { kind, answer: want } => {
                let err = match parsed {
                    Ok(m) => panic!("{name}: should fail with {kind:?}, parsed {m:?}"),
                    Err(e) => e,
                };
                assert_eq!(err.kind, kind, "{name}: error kind");
                assert!(!err.kind.label().is_empty());
                match (want, answer) {
                    (None, None) => {}
                    (Some(status), Some(bytes_out)) => {
                        let text = String::from_utf8(bytes_out).expect("answer is UTF-8");
                        assert!(text.starts_with(&format!("SIP/2.0 {status} ")), "{name}: {text}");
                        assert_eq!(err.status(), status);
                        for via in raw_values(&bytes, &["Via", "v"]) {
                            assert!(
                                text.contains(&format!("\r\nVia: {via}\r\n")),
                                "{name}: Via {via} not echoed in {text}"
                            );
                        }
                        let call_id = &raw_values(&bytes, &["Call-ID", "i"])[0];
                        assert!(text.contains(&format!("\r\nCall-ID: {call_id}\r\n")), "{name}: {text}");
                        let cseq = &raw_values(&bytes, &["CSeq"])[0];
                        assert!(text.contains(&format!("\r\nCSeq: {cseq}\r\n")), "{name}: {text}");
                        assert!(text.ends_with("\r\nContent-Length: 0\r\n\r\n"), "{name}: {text}");
                        assert!(text.contains("\r\nTo: ") && text.contains("\r\nFrom: "));
                    }
                    (want, got) => panic!(
                        "{name}: answer should be {want:?}, got {:?}",
                        got.map(|g| String::from_utf8_lossy(&g).into_owned())
                    ),
                }
            }
        }
    }
}

#[test]
fn error_answers_carry_a_to_tag_and_reparse() {
    let err = parse(&fixture("rfc4475", "mismatch01")).unwrap_err();
    assert_eq!(err.reason_phrase(), "Bad Request - CSeq Method Mismatch");
    let bytes = error_response(&err).unwrap();
    let again = error_response(&err).unwrap();
    assert_eq!(bytes, again, "same request, same tag");
    let r = resp(&parse(&bytes).unwrap()).clone();
    assert_eq!(r.status, 400);
    assert_eq!(r.call_id, "mismatch01.dj0234sxdfl3");
    assert_eq!(r.cseq, CSeq { seq: 8, method: Method::Invite });
    assert_eq!(r.via[0].branch.as_deref(), Some("z9hG4bKkdjuw"));
    assert!(r.to.tag().is_some_and(|t| t.len() == 16));

    let err = parse(&fixture("rfc4475", "insuf")).unwrap_err();
    assert_eq!(err.reason_phrase(), "Bad Request - Missing Call-ID");
    let err = parse(&fixture("rfc4475", "badvers")).unwrap_err();
    assert_eq!((err.status(), err.reason_phrase().as_str()), (505, "Version Not Supported"));
    assert_eq!(err.kind.label(), "bad_version");
    let ctx = err.context.unwrap();
    assert!(ctx.is_request);
    assert_eq!(ctx.method, Some(Method::Options));
    assert_eq!(ctx.via, vec!["SIP/7.0/UDP c.example.com;branch=z9hG4bKkdjuw".to_owned()]);
    assert_eq!(ctx.call_id.as_deref(), Some("badvers.31417@c.example.com"));
}

#[test]
fn no_answer_to_a_malformed_ack() {
    let ack = b"ACK sip:bob@192.0.2.4 SIP/2.0\r\nVia: SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bKnashds9\r\nTo: <sip:bob@biloxi.com>;tag=a\r\nFrom: <sip:alice@atlanta.com>;tag=b\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
    let err = parse(ack).unwrap_err();
    assert_eq!(err.kind, K::CSeqMethodMismatch);
    assert_eq!(error_response(&err), None);
}

#[test]
fn keepalives_and_size_limits() {
    assert_eq!(parse(b"\r\n\r\n").unwrap_err().kind, K::Empty);
    assert_eq!(parse(b"").unwrap_err().kind, K::Empty);
    let mut big = fixture("sip", "rfc3261-f1-invite");
    // Over the limit, but the head fits in it: answered with 513 from what was salvaged.
    let small = Limits { max_message_bytes: 400, max_headers: 128 };
    let err = parse_message(&big, &small).unwrap_err();
    assert_eq!((err.kind, err.status()), (K::TooLarge, 513));
    let answer = String::from_utf8(error_response(&err).unwrap()).unwrap();
    assert!(
        answer.starts_with(
            "SIP/2.0 513 Message Too Large\r\nVia: SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bKnashds8\r\n"
        )
    );
    // Far over it: nothing past the limit is read, so no answer can be formed.
    let tiny = Limits { max_message_bytes: 100, max_headers: 128 };
    assert_eq!(error_response(&parse_message(&big, &tiny).unwrap_err()), None);
    let few = Limits { max_message_bytes: 16384, max_headers: 3 };
    assert_eq!(parse_message(&big, &few).unwrap_err().kind, K::TooManyHeaders);
    // Leading CRLFs before a message are skipped on UDP too.
    big.splice(0..0, b"\r\n\r\n".iter().copied());
    assert!(parse(&big).is_ok());
}

#[test]
fn rfc3261_examples() {
    let m = parse(&fixture("sip", "rfc3261-f1-invite")).unwrap();
    let r = req(&m);
    assert_eq!(r.method, Method::Invite);
    assert_eq!(
        (r.uri.scheme.clone(), r.uri.user.as_deref(), r.uri.host.as_str()),
        (Scheme::Sip, Some("bob"), "biloxi.com")
    );
    assert_eq!(r.via.len(), 1);
    assert_eq!(r.via[0].branch.as_deref(), Some("z9hG4bKnashds8"));
    assert!(r.via[0].has_rfc3261_branch());
    assert_eq!(r.to.display_name.as_deref(), Some("Bob"));
    assert_eq!(r.to.tag(), None);
    assert_eq!(r.from.tag(), Some("1928301774"));
    assert_eq!(r.call_id, "a84b4c76e66710");
    assert_eq!(r.cseq, CSeq { seq: 314159, method: Method::Invite });
    assert_eq!(r.max_forwards, Some(70));
    assert_eq!(r.contact[0].uri.host, "pc33.atlanta.com");
    assert_eq!(r.content_type.as_deref(), Some("application/sdp"));
    assert!(r.body.starts_with(b"v=0\r\n"));
    assert_eq!(check_request(r), Ok(()));

    let m = parse(&fixture("sip", "rfc3261-f5-invite")).unwrap();
    let r = req(&m);
    assert_eq!(r.via.len(), 3);
    assert_eq!(r.via[1].received.as_deref(), Some("192.0.2.2"));
    assert_eq!(r.via[2].host, "pc33.atlanta.com");
    assert_eq!(r.uri.host, "192.0.2.4");

    for (name, status, reason, body) in
        [("rfc3261-f8-180", 180, "Ringing", false), ("rfc3261-f11-200", 200, "OK", true)]
    {
        let m = parse(&fixture("sip", name)).unwrap();
        let r = resp(&m);
        assert_eq!((r.status, r.reason.as_str()), (status, reason));
        assert_eq!(r.via.len(), 3);
        assert_eq!(r.via[0].received.as_deref(), Some("192.0.2.3"));
        assert_eq!(r.to.tag(), Some("a6c85cf"));
        assert_eq!(r.cseq, CSeq { seq: 314159, method: Method::Invite });
        assert_eq!(r.contact[0].uri.host, "192.0.2.4");
        assert_eq!(!r.body.is_empty(), body);
    }

    let m = parse(&fixture("sip", "rfc3261-f14-ack")).unwrap();
    let r = req(&m);
    assert_eq!((r.method.clone(), r.cseq.method.clone()), (Method::Ack, Method::Ack));
    assert_eq!(r.via[0].branch.as_deref(), Some("z9hG4bKnashds9"));

    let m = parse(&fixture("sip", "rfc3261-f15-bye")).unwrap();
    let r = req(&m);
    assert_eq!(r.method, Method::Bye);
    assert_eq!(r.from.tag(), Some("a6c85cf"));
    assert_eq!(r.to.tag(), Some("1928301774"));
    assert_eq!(r.cseq.seq, 231);
    assert_eq!(r.via[0].host_ip(), Some("192.0.2.4".parse().unwrap()));
    assert!(r.body.is_empty());
}

#[test]
fn ipv6_rfc5118() {
    let m = parse(&fixture("sip", "rfc5118-ipv6-register")).unwrap();
    let r = req(&m);
    assert_eq!(r.uri.host, "[2001:db8::10]");
    assert_eq!(r.via[0].host, "[2001:db8::9:1]");
    assert_eq!(r.via[0].host_ip(), Some("2001:db8::9:1".parse().unwrap()));
    assert_eq!(r.contact[0].uri.host, "[2001:db8::9:1]");
    assert_eq!(r.contact[0].display_name.as_deref(), Some("Caller"));
}

#[test]
fn response_for_request_round_trips() {
    let m = parse(&fixture("sip", "rfc3261-f5-invite")).unwrap();
    let mut r = req(&m).clone();
    r.via[0].received = Some("192.0.2.3".into());
    r.via[0].rport = Some(Some(5060));
    let sdp = bytes::Bytes::from_static(b"v=0\r\n");
    let out = OutgoingResponse::for_request(&r, 200, "OK")
        .to_tag("a6c85cf")
        .to_tag("ignored-second-tag")
        .header("Contact", "<sip:bob@192.0.2.4>")
        .body("application/sdp", sdp.clone());
    assert_eq!(out.status(), 200);
    let bytes = out.to_bytes();
    let back = parse(&bytes).unwrap();
    let back = resp(&back);
    assert_eq!((back.status, back.reason.as_str()), (200, "OK"));
    assert_eq!(back.via.len(), 3);
    assert_eq!(back.via[0].received.as_deref(), Some("192.0.2.3"));
    assert_eq!(back.via[0].rport, Some(Some(5060)));
    assert_eq!(back.via[0].branch, r.via[0].branch);
    assert_eq!(back.via[1], r.via[1]);
    assert_eq!(back.via[2], r.via[2]);
    assert_eq!(back.from, r.from);
    assert_eq!(back.to.uri, r.to.uri);
    assert_eq!(back.to.tag(), Some("a6c85cf"));
    assert_eq!(back.call_id, r.call_id);
    assert_eq!(back.cseq, r.cseq);
    assert_eq!(back.contact[0].uri.host, "192.0.2.4");
    assert_eq!(back.body, sdp);
    assert_eq!(back.header("Content-Length"), Some("5"));

    // A To that already has a tag keeps it.
    let bye = parse(&fixture("sip", "rfc3261-f15-bye")).unwrap();
    let out = OutgoingResponse::for_request(req(&bye), 200, "OK").to_tag("other").to_bytes();
    let back = parse(&out).unwrap();
    assert_eq!(resp(&back).to.tag(), Some("1928301774"));
    assert_eq!(resp(&back).header("l"), Some("0"));
}

#[test]
fn rejection_response_and_header_injection() {
    let m = parse(&fixture("rfc4475", "bext01")).unwrap();
    let r = req(&m);
    let rej = check_request(r).unwrap_err();
    assert_eq!((rej.status, rej.reason), (420, "Bad Extension"));
    let bytes = rej.response(r).to_tag("t1").header("X-Evil", "a\r\nInjected: yes").to_bytes();
    let back = parse(&bytes).unwrap();
    let back = resp(&back);
    assert_eq!(back.status, 420);
    assert_eq!(back.header("Unsupported"), Some("nothingSupportsThis, nothingSupportsThisEither"));
    assert_eq!(back.header("Injected"), None);
    assert_eq!(back.to.tag(), Some("t1"));
}

#[test]
fn outgoing_bye() {
    let bye = OutgoingRequest {
        method: Method::Bye,
        uri: "sip:alice@pc33.atlanta.com".into(),
        headers: vec![
            ("Via".into(), "SIP/2.0/UDP 192.0.2.4;branch=z9hG4bKnashds10".into()),
            ("Max-Forwards".into(), "70".into()),
            ("From".into(), "Bob <sip:bob@biloxi.com>;tag=a6c85cf".into()),
            ("To".into(), "Alice <sip:alice@atlanta.com>;tag=1928301774".into()),
            ("Call-ID".into(), "a84b4c76e66710".into()),
            ("CSeq".into(), "231 BYE".into()),
            ("Content-Length".into(), "999".into()),
        ],
        body: None,
    };
    let bytes = bye.to_bytes();
    assert_eq!(bytes, fixture("sip", "rfc3261-f15-bye"), "byte-exact RFC 3261 F15");
    let info = OutgoingRequest {
        method: Method::Info,
        uri: "sip:alice@pc33.atlanta.com".into(),
        headers: bye.headers[..6].to_vec(),
        body: Some(("application/dtmf-relay".into(), bytes::Bytes::from_static(b"Signal=5\r\nDuration=160\r\n"))),
    };
    let mut info_headers = info.headers.clone();
    info_headers[5].1 = "232 INFO".into();
    let info = OutgoingRequest { headers: info_headers, ..info };
    let back = parse(&info.to_bytes()).unwrap();
    let back = req(&back);
    assert_eq!(back.method, Method::Info);
    assert_eq!(back.content_type.as_deref(), Some("application/dtmf-relay"));
    assert_eq!(&back.body[..], b"Signal=5\r\nDuration=160\r\n");
}

#[test]
fn check_request_rules() {
    let base = String::from_utf8(fixture("sip", "rfc3261-f1-invite")).unwrap();
    let with = |from: &str, to: &str| {
        let text = base.replacen(from, to, 1);
        match parse(text.as_bytes()).unwrap() {
            Message::Request(r) => r,
            Message::Response(_) => unreachable!(),
        }
    };
    // 483 for INVITE with Max-Forwards 0, not for OPTIONS (zeromf covers OPTIONS).
    let r = with("Max-Forwards: 70", "Max-Forwards: 0");
    assert_eq!(check_request(&r).unwrap_err().status, 483);
    // tel: Request-URI is supported.
    let r = with("INVITE sip:bob@biloxi.com", "INVITE tel:+15550100");
    assert_eq!(r.uri.user.as_deref(), Some("+15550100"));
    assert_eq!(check_request(&r), Ok(()));
    // Content-Encoding other than identity.
    let r = with("Content-Type:", "Content-Encoding: gzip\r\nContent-Type:");
    assert_eq!(check_request(&r).unwrap_err().extra_headers, vec![("Accept-Encoding", "identity".to_owned())]);
    // Require on CANCEL is ignored; the order is 416 before 420.
    let r = with("Content-Type:", "Require: 100rel\r\nContent-Type:");
    assert_eq!(check_request(&r).unwrap_err().status, 420);
    let r = with("INVITE sip:bob@biloxi.com", "INVITE urn:service:sos").clone();
    let mut r2 = r.clone();
    r2.headers.push(Header { name: "Require".into(), value: "100rel".into() });
    assert_eq!(check_request(&r2).unwrap_err().status, 416);

    // multipart/mixed with SDP and an optional ISUP part is accepted; the SDP part is found.
    let sdp = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
    let mp = |disp: &str| {
        format!(
            "--b1\r\nContent-Type: application/sdp\r\n\r\n{sdp}\r\n--b1\r\nContent-Type: application/isup;version=itu-t92+\r\nContent-Disposition: signal;handling={disp}\r\n\r\n\x01\x02\x03\r\n--b1--\r\n"
        )
    };
    let sip_t = |disp: &str| {
        let body = mp(disp);
        let head: Vec<String> = base
            .split("\r\n\r\n")
            .next()
            .unwrap()
            .split("\r\n")
            .map(|l| match l {
                "Content-Type: application/sdp" => "Content-Type: multipart/mixed;boundary=b1".to_owned(),
                l if l.starts_with("Content-Length:") => format!("Content-Length: {}", body.len()),
                l => l.to_owned(),
            })
            .collect();
        let head = head.join("\r\n");
        let text = format!("{head}\r\n\r\n{body}");
        match parse(text.as_bytes()).unwrap() {
            Message::Request(r) => r,
            Message::Response(_) => unreachable!(),
        }
    };
    let r = sip_t("optional");
    assert_eq!(check_request(&r), Ok(()));
    assert_eq!(r.sdp().as_deref(), Some(sdp.as_bytes()));
    let r = sip_t("required");
    assert_eq!(check_request(&r).unwrap_err().status, 415);
}

#[test]
fn frame_stream_cases() {
    let l = Limits::default();
    let a = fixture("sip", "rfc3261-f1-invite");
    let b = fixture("sip", "rfc3261-f15-bye");
    // Two pipelined messages in one buffer.
    let mut buf = a.clone();
    buf.extend_from_slice(&b);
    assert_eq!(frame_stream(&buf, &l), Ok(Framed::Message(a.len())));
    assert_eq!(frame_stream(&buf[a.len()..], &l), Ok(Framed::Message(b.len())));
    assert!(parse(&buf[..a.len()]).is_ok());
    // A message split across reads: every prefix needs more.
    for cut in [0, 1, 10, a.len() / 2, a.len() - 200, a.len() - 1] {
        assert_eq!(frame_stream(&a[..cut], &l), Ok(Framed::NeedMore), "cut at {cut}");
    }
    // CRLF keep-alives (RFC 5626 ping and pong) before and between messages.
    let mut ka = b"\r\n\r\n".to_vec();
    ka.extend_from_slice(&b);
    assert_eq!(frame_stream(&ka, &l), Ok(Framed::Skip(4)));
    assert_eq!(frame_stream(&ka[4..], &l), Ok(Framed::Message(b.len())));
    assert_eq!(frame_stream(b"\r\n", &l), Ok(Framed::Skip(2)));
    // Missing Content-Length on a stream: error, with a 400 that can be sent before closing.
    let no_cl = String::from_utf8(b.clone()).unwrap().replace("Content-Length: 0\r\n", "");
    let err = frame_stream(no_cl.as_bytes(), &l).unwrap_err();
    assert_eq!(err.kind, K::MissingHeader("Content-Length"));
    assert!(error_response(&err).is_some());
    // Compact form and a body.
    let compact = String::from_utf8(a.clone()).unwrap().replace("Content-Length:", "l:");
    assert_eq!(frame_stream(compact.as_bytes(), &l), Ok(Framed::Message(a.len() - "Content-Length".len() + 1)));
    // Over the limit: head without end, and head + announced body.
    let small = Limits { max_message_bytes: 300, max_headers: 128 };
    assert_eq!(frame_stream(&a, &small).unwrap_err().kind, K::TooLarge);
    let huge =
        String::from_utf8(b.clone()).unwrap().replace("Content-Length: 0", "Content-Length: 99999999999999999999");
    assert_eq!(frame_stream(huge.as_bytes(), &l).unwrap_err().kind, K::BadHeader("Content-Length"));
    let big = String::from_utf8(b.clone()).unwrap().replace("Content-Length: 0", "Content-Length: 16300");
    assert_eq!(frame_stream(big.as_bytes(), &l).unwrap_err().kind, K::TooLarge);
    let endless = vec![b'a'; 20000];
    assert_eq!(frame_stream(&endless, &l).unwrap_err().kind, K::TooLarge);
    let two_cl = String::from_utf8(b.clone()).unwrap().replace("Content-Length: 0", "Content-Length: 0\r\nl: 0");
    assert_eq!(frame_stream(two_cl.as_bytes(), &l).unwrap_err().kind, K::DuplicateHeader("Content-Length"));
}

mod props {
    use proptest::prelude::*;

    use super::super::*;
    use super::fixture;

    fn seeds() -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> =
            ["wsinv", "intmeth", "esc01", "longreq", "mpart01", "unreason", "badinv01", "quotbal", "multi01", "baddn"]
                .iter()
                .map(|n| fixture("rfc4475", n))
                .collect();
        v.push(fixture("sip", "carrier-invite"));
        v.push(fixture("sip", "rfc3261-f11-200"));
        v
    }

    fn exercise(buf: &[u8]) {
        let l = Limits::default();
        match parse_message(buf, &l) {
            Ok(Message::Request(r)) => {
                let _ = check_request(&r);
                let _ = r.sdp();
                let out = OutgoingResponse::for_request(&r, 200, "OK").to_tag("x").to_bytes();
                // What we write from a request we accepted must itself parse.
                assert!(parse_message(&out, &l).is_ok(), "{}", String::from_utf8_lossy(&out));
            }
            Ok(Message::Response(_)) => {}
            Err(e) => {
                let _ = e.reason_phrase();
                let _ = e.kind.label();
                if let Some(bytes) = error_response(&e) {
                    assert!(bytes.ends_with(b"\r\n\r\n"));
                }
            }
        }
        let _ = frame_stream(buf, &l);
        let small = Limits { max_message_bytes: 200, max_headers: 4 };
        let _ = parse_message(buf, &small);
        let _ = frame_stream(buf, &small);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn random_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..2048)) {
            exercise(&buf);
        }

        #[test]
        fn sip_like_text_never_panics(s in "[A-Za-z0-9 :;,<>\"\\\\@=/.%?\r\n\t-]{0,600}") {
            exercise(format!("INVITE sip:a@b SIP/2.0\r\n{s}").as_bytes());
            exercise(format!("SIP/2.0 200 OK\r\n{s}").as_bytes());
        }

        #[test]
        fn mutated_messages_never_panic(
            seed in 0usize..12,
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..12),
        ) {
            let seeds = seeds();
            let mut buf = seeds[seed % seeds.len()].clone();
            for (idx, byte, op) in edits {
                if buf.is_empty() { break; }
                let i = idx.index(buf.len());
                match op {
                    0 => buf[i] = byte,
                    1 => { buf.remove(i); }
                    2 => buf.insert(i, byte),
                    _ => buf.truncate(i),
                }
            }
            exercise(&buf);
        }
    }
}

#[test]
fn non_utf8_header_values_are_decoded_lossily() {
    let mut msg = fixture("sip", "rfc3261-f15-bye");
    let at = msg.windows(4).position(|w| w == b"Bob ").unwrap();
    msg.splice(at..at + 3, b"\"Jos\xe9\"".iter().copied());
    let m = parse(&msg).unwrap();
    let r = req(&m);
    assert_eq!(r.from.display_name.as_deref(), Some("Jos\u{fffd}"));
    assert_eq!(r.from.tag(), Some("a6c85cf"));
    assert!(check_request(r).is_ok());
}

#[test]
fn empty_context_for_keepalive() {
    let err = parse(b"\r\n").unwrap_err();
    assert_eq!((err.kind.label(), err.context.is_none()), ("empty", true));
    assert_eq!(error_response(&err), None);
}
