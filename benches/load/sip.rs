//! A minimal SIP UAC over one UDP socket for all calls (like sipp): responses are dispatched to their call by
//! Call-ID. INVITE with timer A retransmission → 1xx/2xx → ACK (new branch, To tag from the 2xx; re-sent for every
//! retransmitted 2xx) → BYE with timer E retransmission. Requests from the server (BYE, OPTIONS) get a 200.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::agent::from_number;

const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);

/// A parsed SIP message: only what the UAC needs.
#[derive(Debug, Clone)]
pub struct Msg {
    /// `Some(code)` for a response.
    pub status: Option<u16>,
    pub reason: String,
    /// Request method, or the CSeq method of a response.
    pub method: String,
    pub call_id: String,
    pub to: String,
    pub contact: Option<String>,
    pub body: String,
    raw_headers: Vec<(String, String)>,
}

impl Msg {
    pub fn parse(bytes: &[u8]) -> Option<Msg> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
        let mut lines = head.split("\r\n");
        let start = lines.next()?;
        let (status, reason, mut method) = if let Some(rest) = start.strip_prefix("SIP/2.0 ") {
            let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
            (Some(code.parse().ok()?), reason.to_owned(), String::new())
        } else {
            (None, String::new(), start.split(' ').next()?.to_owned())
        };
        let mut raw_headers: Vec<(String, String)> = Vec::new();
        for line in lines {
            if line.starts_with([' ', '\t']) {
                if let Some(last) = raw_headers.last_mut() {
                    last.1.push(' ');
                    last.1.push_str(line.trim());
                }
                continue;
            }
            let Some((name, value)) = line.split_once(':') else { continue };
            let name = match name.trim().to_ascii_lowercase().as_str() {
                "i" => "call-id".to_owned(),
                "t" => "to".to_owned(),
                "f" => "from".to_owned(),
                "v" => "via".to_owned(),
                "m" => "contact".to_owned(),
                "l" => "content-length".to_owned(),
                other => other.to_owned(),
            };
            raw_headers.push((name, value.trim().to_owned()));
        }
        let header = |n: &str| raw_headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let call_id = header("call-id")?;
        let cseq = header("cseq")?;
        if status.is_some() {
            method = cseq.split_whitespace().nth(1)?.to_owned();
        }
        let contact = header("contact").and_then(|c| {
            let start = c.find('<')? + 1;
            let end = c[start..].find('>')? + start;
            Some(c[start..end].to_owned())
        });
        Some(Msg {
            status,
            reason,
            method,
            call_id,
            to: header("to").unwrap_or_default(),
            contact,
            body: body.to_owned(),
            raw_headers,
        })
    }

    fn to_tag(&self) -> Option<&str> {
        self.to.split(';').find_map(|p| p.trim().strip_prefix("tag="))
    }

    /// The `m=audio` address of an SDP answer (session- or media-level `c=`).
    pub fn sdp_audio(&self) -> Option<SocketAddr> {
        let mut ip = None;
        let mut port = None;
        for line in self.body.lines() {
            if let Some(c) = line.strip_prefix("c=IN IP4 ") {
                ip = c.split('/').next().and_then(|s| s.trim().parse().ok());
            } else if let Some(m) = line.strip_prefix("m=audio ") {
                port = m.split_whitespace().next().and_then(|p| p.parse::<u16>().ok());
            }
        }
        Some(SocketAddr::new(ip?, port?))
    }
}

struct Entry {
    tx: mpsc::UnboundedSender<Msg>,
    /// The ACK for the 2xx, re-sent on each retransmitted 2xx.
    ack: Option<Vec<u8>>,
}

/// Counters for the signalling plane.
#[derive(Default, Debug, Clone, serde::Serialize)]
pub struct SipCounters {
    pub invites_retransmitted: u64,
    pub ok_retransmissions_acked: u64,
    pub byes_retransmitted: u64,
    pub server_byes: u64,
    pub server_other_requests: u64,
    pub stray_responses: u64,
    pub unparsable: u64,
}

pub struct Uac {
    sock: UdpSocket,
    local: SocketAddr,
    server: SocketAddr,
    run: String,
    /// The number every INVITE calls (the Request-URI user).
    number: String,
    calls: Mutex<HashMap<String, Entry>>,
    pub counters: Mutex<SipCounters>,
    branch: AtomicU64,
}

/// An established call, as the UAC knows it.
pub struct Dialog {
    pub idx: u32,
    pub call_id: String,
    from: String,
    to: String,
    target: String,
    pub remote_rtp: SocketAddr,
    pub setup: Duration,
}

#[derive(Debug)]
pub enum SetupError {
    Rejected(u16, String),
    Timeout { provisional: bool },
    BadAnswer(String),
    Io(String),
}

impl std::fmt::Display for SetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SetupError::Rejected(code, reason) => write!(f, "rejected: {code} {reason}"),
            SetupError::Timeout { provisional: true } => write!(f, "timed out after a provisional response"),
            SetupError::Timeout { provisional: false } => write!(f, "timed out with no response at all"),
            SetupError::BadAnswer(s) => write!(f, "bad 200 OK: {s}"),
            SetupError::Io(s) => write!(f, "socket error: {s}"),
        }
    }
}

impl Uac {
    pub async fn bind(server: SocketAddr, run: &str) -> std::io::Result<Arc<Uac>> {
        Self::bind_calling(server, run, "+15550100").await
    }

    /// A UAC whose calls go to `number` (E.164 as written in the server's config).
    pub async fn bind_calling(server: SocketAddr, run: &str, number: &str) -> std::io::Result<Arc<Uac>> {
        let sock = UdpSocket::bind("127.0.0.1:0").await?;
        let local = sock.local_addr()?;
        Ok(Arc::new(Uac {
            sock,
            local,
            server,
            run: run.to_owned(),
            number: number.to_owned(),
            calls: Mutex::new(HashMap::new()),
            counters: Mutex::new(SipCounters::default()),
            branch: AtomicU64::new(1),
        }))
    }

    fn branch(&self) -> String {
        format!("z9hG4bK-fvl-{}-{}", self.run, self.branch.fetch_add(1, Ordering::Relaxed))
    }

    async fn send(&self, bytes: &[u8]) -> std::io::Result<()> {
        self.sock.send_to(bytes, self.server).await.map(|_| ())
    }

    /// Reads the SIP socket until aborted, dispatching responses and answering requests.
    pub async fn dispatch(self: Arc<Self>) {
        let mut buf = vec![0u8; 65536];
        loop {
            let Ok((len, from)) = self.sock.recv_from(&mut buf).await else {
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            };
            let Some(msg) = Msg::parse(&buf[..len]) else {
                self.counters.lock().unparsable += 1;
                continue;
            };
            if msg.status.is_none() {
                self.answer_request(&msg, from).await;
                continue;
            }
            let resend_ack = {
                let calls = self.calls.lock();
                match calls.get(&msg.call_id) {
                    None => {
                        self.counters.lock().stray_responses += 1;
                        None
                    }
                    Some(e) => {
                        let is_2xx_invite =
                            msg.method == "INVITE" && msg.status.is_some_and(|c| (200..300).contains(&c));
                        match (&e.ack, is_2xx_invite) {
                            (Some(ack), true) => Some(ack.clone()),
                            _ => {
                                let _ = e.tx.send(msg.clone());
                                None
                            }
                        }
                    }
                }
            };
            if let Some(ack) = resend_ack {
                self.counters.lock().ok_retransmissions_acked += 1;
                let _ = self.send(&ack).await;
            }
        }
    }

    async fn answer_request(&self, req: &Msg, from: SocketAddr) {
        if req.method == "ACK" {
            return;
        }
        let code = match req.method.as_str() {
            "BYE" => {
                self.counters.lock().server_byes += 1;
                if let Some(e) = self.calls.lock().get(&req.call_id) {
                    let _ = e.tx.send(req.clone());
                }
                "200 OK"
            }
            "OPTIONS" => {
                self.counters.lock().server_other_requests += 1;
                "200 OK"
            }
            _ => {
                self.counters.lock().server_other_requests += 1;
                "501 Not Implemented"
            }
        };
        let mut resp = format!("SIP/2.0 {code}\r\n");
        for (name, value) in &req.raw_headers {
            let canonical = match name.as_str() {
                "via" => "Via",
                "from" => "From",
                "to" => "To",
                "call-id" => "Call-ID",
                "cseq" => "CSeq",
                _ => continue,
            };
            resp.push_str(&format!("{canonical}: {value}\r\n"));
        }
        resp.push_str("Content-Length: 0\r\n\r\n");
        let _ = self.sock.send_to(resp.as_bytes(), from).await;
    }

    /// Places call `idx` with its RTP at `rtp`, and waits (at most `timeout`) for it to be answered.
    pub async fn invite(&self, idx: u32, rtp: SocketAddr, timeout: Duration) -> Result<Dialog, SetupError> {
        let call_id = format!("fvl-{}-{idx}@127.0.0.1", self.run);
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.calls.lock().insert(call_id.clone(), Entry { tx, ack: None });
        let result = self.invite_inner(idx, rtp, timeout, &call_id, &mut rx).await;
        if result.is_err() {
            self.calls.lock().remove(&call_id);
        }
        result
    }

    async fn invite_inner(
        &self,
        idx: u32,
        rtp: SocketAddr,
        timeout: Duration,
        call_id: &str,
        rx: &mut mpsc::UnboundedReceiver<Msg>,
    ) -> Result<Dialog, SetupError> {
        let server = self.server;
        let user = from_number(idx);
        let ruri = format!("sip:{}@{server}", self.number);
        let from = format!("<sip:{user}@{}>;tag=fvl{idx}", self.local);
        let to = format!("<{ruri}>");
        let sdp = format!(
            "v=0\r\no=fairvox-load {idx} 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=audio {} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
             a=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n",
            rtp.port()
        );
        let branch = self.branch();
        let invite = format!(
            "INVITE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={branch};rport\r\nMax-Forwards: 70\r\n\
             From: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:{user}@{local}>\r\n\
             User-Agent: fairvox-load\r\nContent-Type: application/sdp\r\nContent-Length: {len}\r\n\r\n{sdp}",
            local = self.local,
            len = sdp.len()
        );
        let started = Instant::now();
        let deadline = started + timeout;
        self.send(invite.as_bytes()).await.map_err(|e| SetupError::Io(e.to_string()))?;
        let mut interval = T1;
        let mut next_retx = started + interval;
        let mut provisional = false;
        loop {
            let wake = if provisional { deadline } else { next_retx.min(deadline) };
            let msg = tokio::select! {
                m = rx.recv() => m,
                _ = tokio::time::sleep_until(wake.into()) => None,
            };
            let now = Instant::now();
            let Some(msg) = msg else {
                if now >= deadline {
                    if provisional {
                        let cancel = format!(
                            "CANCEL {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch={branch};rport\r\nMax-Forwards: 70\r\n\
                             From: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n",
                            self.local
                        );
                        let _ = self.send(cancel.as_bytes()).await;
                    }
                    return Err(SetupError::Timeout { provisional });
                }
                if !provisional && now >= next_retx {
                    self.counters.lock().invites_retransmitted += 1;
                    let _ = self.send(invite.as_bytes()).await;
                    interval = (interval * 2).min(T2);
                    next_retx = now + interval;
                }
                continue;
            };
            if msg.method != "INVITE" {
                continue;
            }
            let code = msg.status.unwrap_or(0);
            match code {
                100..=199 => provisional = true,
                200..=299 => {
                    let setup = started.elapsed();
                    let target = msg.contact.clone().unwrap_or_else(|| ruri.clone());
                    let ack = format!(
                        "ACK {target} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch={};rport\r\nMax-Forwards: 70\r\n\
                         From: {from}\r\nTo: {}\r\nCall-ID: {call_id}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
                        self.local,
                        self.branch(),
                        msg.to
                    );
                    self.send(ack.as_bytes()).await.map_err(|e| SetupError::Io(e.to_string()))?;
                    if let Some(e) = self.calls.lock().get_mut(call_id) {
                        e.ack = Some(ack.into_bytes());
                    }
                    let remote_rtp = msg
                        .sdp_audio()
                        .ok_or_else(|| SetupError::BadAnswer(format!("no m=audio/c= in answer: {:?}", msg.body)))?;
                    if msg.to_tag().is_none() {
                        return Err(SetupError::BadAnswer("200 OK without a To tag".to_owned()));
                    }
                    return Ok(Dialog {
                        idx,
                        call_id: call_id.to_owned(),
                        from,
                        to: msg.to.clone(),
                        target,
                        remote_rtp,
                        setup,
                    });
                }
                _ => {
                    // Non-2xx final: the ACK belongs to the INVITE transaction (same branch).
                    let ack = format!(
                        "ACK {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch={branch};rport\r\nMax-Forwards: 70\r\n\
                         From: {from}\r\nTo: {}\r\nCall-ID: {call_id}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
                        self.local, msg.to
                    );
                    let _ = self.send(ack.as_bytes()).await;
                    return Err(SetupError::Rejected(code, msg.reason.clone()));
                }
            }
        }
    }

    /// Hangs up: BYE with timer E, waiting at most `timeout` for its final response. `Ok(code)` is that response's
    /// status (0 if the server had already hung up itself).
    pub async fn bye(&self, d: &Dialog, timeout: Duration) -> Result<u16, String> {
        let mut rx = {
            let (tx, rx) = mpsc::unbounded_channel();
            let mut calls = self.calls.lock();
            let Some(e) = calls.get_mut(&d.call_id) else { return Err("call unknown to the UAC".to_owned()) };
            e.tx = tx;
            rx
        };
        let bye = format!(
            "BYE {} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch={};rport\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\n\
             Call-ID: {}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
            d.target,
            self.local,
            self.branch(),
            d.from,
            d.to,
            d.call_id
        );
        let started = Instant::now();
        let deadline = started + timeout;
        let mut interval = T1;
        let mut next_retx = started + interval;
        self.send(bye.as_bytes()).await.map_err(|e| e.to_string())?;
        let result = loop {
            let msg = tokio::select! {
                m = rx.recv() => m,
                _ = tokio::time::sleep_until(next_retx.min(deadline).into()) => None,
            };
            let now = Instant::now();
            match msg {
                Some(m) if m.method == "BYE" && m.status.is_some_and(|c| c >= 200) => break Ok(m.status.unwrap_or(0)),
                Some(m) if m.method == "BYE" && m.status.is_none() => break Ok(0), // the server hung up first
                Some(_) => {}
                None if now >= deadline => break Err(format!("no final response to BYE in {timeout:?}")),
                None => {
                    self.counters.lock().byes_retransmitted += 1;
                    let _ = self.send(bye.as_bytes()).await;
                    interval = (interval * 2).min(T2);
                    next_retx = now + interval;
                }
            }
        };
        self.calls.lock().remove(&d.call_id);
        result
    }
}
