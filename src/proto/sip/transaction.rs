//! The SIP transaction layer (RFC 3261 §17, with RFC 6026's Accepted state), sans-IO.
//!
//! It owns server transactions (INVITE and non-INVITE) and non-INVITE client transactions (the BYE we send),
//! their matching (§17.2.3, including RFC 2543 requests without a magic-cookie branch), retransmission and timers.
//! It never reads the clock or touches a socket: the driver passes `now` into every `handle_*` call and then
//! drains, in this order, [`TransactionLayer::poll_transmit`], [`TransactionLayer::poll_event`] and
//! [`TransactionLayer::poll_timeout`], as str0m and quinn-proto do. Mutate, drain, mutate again.
//!
//! Methods, sorted the quinn-proto way:
//! - `handle_request`, `handle_response`, `handle_timeout`: input from the network and the clock;
//! - `respond`, `send_request`, `send_stateless`: what the transaction user (the UAS core) decides;
//! - `poll_transmit`, `poll_event`, `poll_timeout`: output;
//! - `len`: a getter for tests and metrics.
//!
//! Timer deadlines are kept per transaction and found by a scan in `poll_timeout`: the number of live
//! transactions is small (one per request in flight, a few per call at most), so a scan is cheaper than a heap.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{Method, OutgoingRequest, OutgoingResponse, Request, Response};

/// RFC 3261 timer values (§17.1.1.1, Table 4).
#[derive(Copy, Clone, Debug)]
pub struct Timers {
    pub t1: Duration,
    pub t2: Duration,
    pub t4: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers { t1: Duration::from_millis(500), t2: Duration::from_secs(4), t4: Duration::from_secs(5) }
    }
}

/// How a message travels; TCP messages name the connection they came on, so responses go back on it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp { conn: u64 },
}

impl Transport {
    pub fn is_reliable(&self) -> bool {
        matches!(self, Transport::Tcp { .. })
    }

    /// The Via transport token.
    pub fn via_name(&self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp { .. } => "TCP",
        }
    }
}

/// Where a message came from or goes to.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Peer {
    pub addr: SocketAddr,
    pub transport: Transport,
}

/// Bytes the driver must send.
#[derive(Debug)]
pub struct Transmit {
    pub dest: Peer,
    pub bytes: Vec<u8>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerTxId(u64);

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientTxId(u64);

/// What the transaction layer hands up to its user.
#[derive(Debug)]
pub enum TxEvent {
    /// A new request: the user must answer it with [`TransactionLayer::respond`] (CANCEL included; its
    /// `invite_tx` names the INVITE transaction it cancels, if one matches).
    Request { tx: ServerTxId, request: Box<Request>, source: Peer, invite_tx: Option<ServerTxId> },
    /// An ACK that matched no INVITE server transaction in Completed: an ACK for a 2xx, for the dialog layer.
    Ack { request: Box<Request>, source: Peer },
    /// A final response to a request we sent.
    Response { tx: ClientTxId, response: Box<Response> },
    /// A request we sent got no final response in 64*T1 (Timer F), or its transport failed.
    ClientTimeout { tx: ClientTxId },
    /// A non-2xx final response to an INVITE was never acknowledged (Timer H).
    AckTimeout { tx: ServerTxId },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TxError {
    #[error("no such server transaction")]
    UnknownTransaction,
    #[error("the transaction already sent a final response")]
    AlreadyFinal,
}

/// Matching key for server transactions (§17.2.3).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum ServerKey {
    /// RFC 3261: branch + sent-by + method (ACK folds into INVITE; CANCEL is its own).
    Rfc3261 { branch: String, sent_by: String, method: MethodKey },
    /// RFC 2543 fallback: enough of the request to tell transactions apart.
    Rfc2543 { call_id: String, from_tag: String, cseq: u32, top_via: String, method: MethodKey },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum MethodKey {
    Invite,
    Cancel,
    Other(String),
}

const MAGIC_COOKIE: &str = "z9hG4bK";

fn method_key(m: &Method) -> MethodKey {
    match m {
        Method::Invite | Method::Ack => MethodKey::Invite,
        Method::Cancel => MethodKey::Cancel,
        other => MethodKey::Other(other.as_str().to_owned()),
    }
}

fn server_key(req: &Request, method: MethodKey) -> Option<ServerKey> {
    let top = req.via.first()?;
    let sent_by = match top.port {
        Some(p) => format!("{}:{}", top.host.to_ascii_lowercase(), p),
        None => top.host.to_ascii_lowercase(),
    };
    match &top.branch {
        Some(b) if b.starts_with(MAGIC_COOKIE) => Some(ServerKey::Rfc3261 { branch: b.clone(), sent_by, method }),
        _ => Some(ServerKey::Rfc2543 {
            call_id: req.call_id.clone(),
            from_tag: req.from.tag().unwrap_or("").to_owned(),
            cseq: req.cseq.seq,
            top_via: sent_by,
            method,
        }),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum ServerState {
    /// INVITE: Proceeding; non-INVITE: Trying/Proceeding (no difference for retransmission handling here).
    Proceeding,
    /// INVITE sent a 2xx (RFC 6026): absorbs retransmissions, the core retransmits the 2xx.
    Accepted,
    /// A final response was sent (non-2xx for INVITE).
    Completed,
    /// INVITE: ACK received, absorbing ACK retransmissions until Timer I.
    Confirmed,
}

struct ServerTx {
    key: ServerKey,
    is_invite: bool,
    state: ServerState,
    peer: Peer,
    /// The last response sent, for retransmission.
    last_response: Option<Vec<u8>>,
    /// Timer G (response retransmission, INVITE non-2xx over UDP).
    retransmit_at: Option<Instant>,
    retransmit_interval: Duration,
    /// Timers H, I, J, L: when the transaction ends.
    end_at: Option<Instant>,
    /// Whether reaching `end_at` in Completed means the ACK never came (Timer H).
    end_is_ack_timeout: bool,
}

struct ClientTx {
    peer: Peer,
    request: Vec<u8>,
    branch: String,
    method: Method,
    final_received: bool,
    retransmit_at: Option<Instant>,
    retransmit_interval: Duration,
    /// Timer F before a final response, Timer K after.
    end_at: Instant,
}

/// The transaction layer of one SIP endpoint.
pub struct TransactionLayer {
    timers: Timers,
    next_id: u64,
    server: HashMap<ServerTxId, ServerTx>,
    server_index: HashMap<ServerKey, ServerTxId>,
    client: HashMap<ClientTxId, ClientTx>,
    client_index: HashMap<(String, MethodKey), ClientTxId>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<TxEvent>,
    /// Retransmitted requests absorbed by a transaction (a carrier retransmitting is worth seeing).
    pub absorbed_retransmissions: u64,
}

impl TransactionLayer {
    pub fn new(timers: Timers) -> TransactionLayer {
        TransactionLayer {
            timers,
            next_id: 1,
            server: HashMap::new(),
            server_index: HashMap::new(),
            client: HashMap::new(),
            client_index: HashMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            absorbed_retransmissions: 0,
        }
    }

    pub fn timers(&self) -> Timers {
        self.timers
    }

    /// Live transactions (server, client).
    pub fn len(&self) -> (usize, usize) {
        (self.server.len(), self.client.len())
    }

    pub fn is_empty(&self) -> bool {
        self.server.is_empty() && self.client.is_empty()
    }

    /// Requests we sent that have no final response yet (a draining server waits for these, not for the
    /// transactions that only linger to absorb retransmissions).
    pub fn awaiting_answers(&self) -> usize {
        self.client.values().filter(|t| !t.final_received).count()
    }

    /// A parsed request from the network.
    pub fn handle_request(&mut self, now: Instant, request: Request, source: Peer) {
        let is_ack = request.method == Method::Ack;
        let Some(key) = server_key(&request, method_key(&request.method)) else {
            return; // No Via: the parser refuses these; nothing to answer to.
        };
        if let Some(&id) = self.server_index.get(&key) {
            self.on_matched_request(now, id, is_ack);
            if is_ack {
                // An ACK that matched an INVITE transaction in Accepted is an ACK for the 2xx: the dialog needs it.
                if let Some(tx) = self.server.get(&id)
                    && tx.state == ServerState::Accepted
                {
                    self.events.push_back(TxEvent::Ack { request: Box::new(request), source });
                }
            }
            return;
        }
        if is_ack {
            self.events.push_back(TxEvent::Ack { request: Box::new(request), source });
            return;
        }
        let invite_tx = if request.method == Method::Cancel {
            server_key(&request, MethodKey::Invite).and_then(|k| self.server_index.get(&k).copied())
        } else {
            None
        };
        let id = ServerTxId(self.alloc_id());
        let is_invite = request.method == Method::Invite;
        self.server.insert(
            id,
            ServerTx {
                key: key.clone(),
                is_invite,
                state: ServerState::Proceeding,
                peer: source,
                last_response: None,
                retransmit_at: None,
                retransmit_interval: self.timers.t1,
                end_at: None,
                end_is_ack_timeout: false,
            },
        );
        self.server_index.insert(key, id);
        self.events.push_back(TxEvent::Request { tx: id, request: Box::new(request), source, invite_tx });
    }

    fn on_matched_request(&mut self, now: Instant, id: ServerTxId, is_ack: bool) {
        let t4 = self.timers.t4;
        let Some(tx) = self.server.get_mut(&id) else { return };
        if is_ack {
            if tx.is_invite && tx.state == ServerState::Completed {
                // §17.2.1: ACK for our non-2xx final. Timer I absorbs ACK retransmissions.
                tx.state = ServerState::Confirmed;
                tx.retransmit_at = None;
                tx.end_is_ack_timeout = false;
                tx.end_at = Some(if tx.peer.transport.is_reliable() { now } else { now + t4 });
            }
            return;
        }
        // A retransmitted request: resend the last response, if any (Proceeding or Completed).
        self.absorbed_retransmissions += 1;
        match tx.state {
            ServerState::Proceeding | ServerState::Completed => {
                if let Some(bytes) = &tx.last_response {
                    self.transmits.push_back(Transmit { dest: tx.peer, bytes: bytes.clone() });
                }
            }
            ServerState::Accepted | ServerState::Confirmed => {}
        }
    }

    /// A parsed response from the network: matched to a client transaction by branch and CSeq method (§17.1.3).
    pub fn handle_response(&mut self, now: Instant, response: Response) {
        let Some(branch) = response.via.first().and_then(|v| v.branch.clone()) else { return };
        let Some(&id) = self.client_index.get(&(branch, method_key(&response.cseq.method))) else { return };
        let t4 = self.timers.t4;
        let Some(tx) = self.client.get_mut(&id) else { return };
        if response.status < 200 {
            // Proceeding: keep retransmitting at T2 (§17.1.2.2).
            if tx.retransmit_at.is_some() {
                tx.retransmit_interval = self.timers.t2;
            }
            return;
        }
        if tx.final_received {
            return; // retransmitted final, absorbed
        }
        tx.final_received = true;
        tx.retransmit_at = None;
        tx.end_at = if tx.peer.transport.is_reliable() { now } else { now + t4 };
        self.events.push_back(TxEvent::Response { tx: id, response: Box::new(response) });
    }

    /// The user's response on a server transaction.
    pub fn respond(&mut self, now: Instant, id: ServerTxId, response: &OutgoingResponse) -> Result<(), TxError> {
        let timers = self.timers;
        let tx = self.server.get_mut(&id).ok_or(TxError::UnknownTransaction)?;
        if tx.state != ServerState::Proceeding {
            return Err(TxError::AlreadyFinal);
        }
        let status = response.status();
        let bytes = response.to_bytes();
        self.transmits.push_back(Transmit { dest: tx.peer, bytes: bytes.clone() });
        tx.last_response = Some(bytes);
        if status < 200 {
            return Ok(());
        }
        let reliable = tx.peer.transport.is_reliable();
        if tx.is_invite && status < 300 {
            // RFC 6026 Accepted: Timer L; the core retransmits the 2xx until the ACK.
            tx.state = ServerState::Accepted;
            tx.last_response = None;
            tx.end_at = Some(now + 64 * timers.t1);
        } else if tx.is_invite {
            tx.state = ServerState::Completed;
            if !reliable {
                tx.retransmit_interval = timers.t1;
                tx.retransmit_at = Some(now + timers.t1);
            }
            tx.end_at = Some(now + 64 * timers.t1);
            tx.end_is_ack_timeout = true;
        } else {
            tx.state = ServerState::Completed;
            tx.end_at = Some(if reliable { now } else { now + 64 * timers.t1 });
        }
        Ok(())
    }

    /// Sends a request as a non-INVITE client transaction; `branch` must be the one in its top Via.
    pub fn send_request(&mut self, now: Instant, request: &OutgoingRequest, branch: &str, dest: Peer) -> ClientTxId {
        self.send_request_bytes(now, request.to_bytes(), request.method.clone(), branch, dest)
    }

    /// [`Transactions::send_request`] for a request already serialised (`bytes` must carry `branch` in its top
    /// Via): a request written down by an earlier process, sent again by this one.
    pub fn send_request_bytes(
        &mut self,
        now: Instant,
        bytes: Vec<u8>,
        method: Method,
        branch: &str,
        dest: Peer,
    ) -> ClientTxId {
        let id = ClientTxId(self.alloc_id());
        self.transmits.push_back(Transmit { dest, bytes: bytes.clone() });
        let reliable = dest.transport.is_reliable();
        self.client.insert(
            id,
            ClientTx {
                peer: dest,
                request: bytes,
                branch: branch.to_owned(),
                method: method.clone(),
                final_received: false,
                retransmit_at: if reliable { None } else { Some(now + self.timers.t1) },
                retransmit_interval: self.timers.t1,
                end_at: now + 64 * self.timers.t1,
            },
        );
        self.client_index.insert((branch.to_owned(), method_key(&method)), id);
        id
    }

    /// Bytes outside any transaction (2xx retransmissions by the core, 400s for unparseable requests).
    pub fn send_stateless(&mut self, dest: Peer, bytes: Vec<u8>) {
        self.transmits.push_back(Transmit { dest, bytes });
    }

    /// The transport under a TCP connection failed: its transactions end, client ones with a timeout event.
    pub fn handle_connection_lost(&mut self, conn: u64) {
        let lost = Transport::Tcp { conn };
        let dead: Vec<ServerTxId> =
            self.server.iter().filter(|(_, t)| t.peer.transport == lost).map(|(k, _)| *k).collect();
        for id in dead {
            self.remove_server(id);
        }
        let dead: Vec<ClientTxId> = self
            .client
            .iter()
            .filter(|(_, t)| t.peer.transport == lost && !t.final_received)
            .map(|(k, _)| *k)
            .collect();
        for id in dead {
            self.remove_client(id);
            self.events.push_back(TxEvent::ClientTimeout { tx: id });
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let t2 = self.timers.t2;
        let mut ended = Vec::new();
        for (id, tx) in self.server.iter_mut() {
            if let Some(at) = tx.retransmit_at
                && at <= now
            {
                if let Some(bytes) = &tx.last_response {
                    self.transmits.push_back(Transmit { dest: tx.peer, bytes: bytes.clone() });
                }
                tx.retransmit_interval = (tx.retransmit_interval * 2).min(t2);
                tx.retransmit_at = Some(now + tx.retransmit_interval);
            }
            if let Some(at) = tx.end_at
                && at <= now
            {
                ended.push((*id, tx.state == ServerState::Completed && tx.end_is_ack_timeout));
            }
        }
        for (id, ack_timeout) in ended {
            self.remove_server(id);
            if ack_timeout {
                self.events.push_back(TxEvent::AckTimeout { tx: id });
            }
        }
        let mut ended = Vec::new();
        for (id, tx) in self.client.iter_mut() {
            if let Some(at) = tx.retransmit_at
                && at <= now
                && !tx.final_received
            {
                self.transmits.push_back(Transmit { dest: tx.peer, bytes: tx.request.clone() });
                tx.retransmit_interval = (tx.retransmit_interval * 2).min(t2);
                tx.retransmit_at = Some(now + tx.retransmit_interval);
            }
            if tx.end_at <= now {
                ended.push((*id, !tx.final_received));
            }
        }
        for (id, timed_out) in ended {
            self.remove_client(id);
            if timed_out {
                self.events.push_back(TxEvent::ClientTimeout { tx: id });
            }
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<TxEvent> {
        self.events.pop_front()
    }

    /// The earliest deadline of any transaction timer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let server = self.server.values().flat_map(|t| [t.retransmit_at, t.end_at]).flatten();
        let client = self
            .client
            .values()
            .flat_map(|t| [t.retransmit_at.filter(|_| !t.final_received), Some(t.end_at)])
            .flatten();
        server.chain(client).min()
    }

    /// The method of a client transaction (for the user, matching a response to what it sent).
    pub fn client_method(&self, id: ClientTxId) -> Option<&Method> {
        self.client.get(&id).map(|t| &t.method)
    }

    fn remove_server(&mut self, id: ServerTxId) {
        if let Some(tx) = self.server.remove(&id) {
            self.server_index.remove(&tx.key);
        }
    }

    fn remove_client(&mut self, id: ClientTxId) {
        if let Some(tx) = self.client.remove(&id) {
            self.client_index.remove(&(tx.branch, method_key(&tx.method)));
        }
    }

    fn alloc_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }
}

#[cfg(test)]
mod tests {
    //! The transaction layer alone, in virtual time: reliable-transport timers, lost connections, RFC 2543 matching.

    use super::*;
    use crate::proto::sip::{Limits, Message, parse_message};

    const TCP: Transport = Transport::Tcp { conn: 7 };

    fn peer(transport: Transport) -> Peer {
        Peer { addr: "127.0.0.1:5099".parse().unwrap(), transport }
    }

    fn request(method: &str, branch: &str, cseq_method: &str) -> Request {
        let text = format!(
            "{method} sip:15550100@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5099{branch}\r\nFrom: <sip:a@b>;tag=f1\r\nTo: <sip:15550100@127.0.0.1>\r\nCall-ID: t1\r\nCSeq: 1 {cseq_method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        );
        match parse_message(text.as_bytes(), &Limits::default()) {
            Ok(Message::Request(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    fn drain(layer: &mut TransactionLayer) -> (usize, Vec<TxEvent>) {
        let sent = std::iter::from_fn(|| layer.poll_transmit()).count();
        (sent, std::iter::from_fn(|| layer.poll_event()).collect())
    }

    fn server_tx(events: &[TxEvent]) -> ServerTxId {
        match events {
            [TxEvent::Request { tx, .. }] => *tx,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn over_tcp_a_non_2xx_final_is_not_retransmitted_and_the_ack_ends_the_transaction() {
        let mut layer = TransactionLayer::new(Timers::default());
        let t0 = Instant::now();
        layer.handle_request(t0, request("INVITE", ";branch=z9hG4bKtcp1", "INVITE"), peer(TCP));
        let tx = server_tx(&drain(&mut layer).1);
        let invite = request("INVITE", ";branch=z9hG4bKtcp1", "INVITE");
        layer.respond(t0, tx, &OutgoingResponse::for_request(&invite, 486, "Busy Here").to_tag("x")).unwrap();
        assert_eq!(drain(&mut layer).0, 1);
        layer.handle_timeout(t0 + Duration::from_secs(2));
        assert_eq!(drain(&mut layer).0, 0, "no Timer G over a reliable transport");
        layer.handle_request(t0 + Duration::from_secs(2), request("ACK", ";branch=z9hG4bKtcp1", "ACK"), peer(TCP));
        assert!(drain(&mut layer).1.is_empty(), "the ACK of a non-2xx is absorbed");
        layer.handle_timeout(t0 + Duration::from_secs(2));
        assert!(layer.is_empty(), "Timer I is zero over TCP");
    }

    #[test]
    fn over_tcp_a_non_invite_transaction_ends_with_its_final_response() {
        let mut layer = TransactionLayer::new(Timers::default());
        let t0 = Instant::now();
        layer.handle_request(t0, request("OPTIONS", ";branch=z9hG4bKopt1", "OPTIONS"), peer(TCP));
        let tx = server_tx(&drain(&mut layer).1);
        let options = request("OPTIONS", ";branch=z9hG4bKopt1", "OPTIONS");
        layer.respond(t0, tx, &OutgoingResponse::for_request(&options, 200, "OK")).unwrap();
        layer.handle_timeout(t0);
        assert!(layer.is_empty(), "Timer J is zero over TCP");
        assert_eq!(
            layer.respond(t0, tx, &OutgoingResponse::for_request(&options, 200, "OK")),
            Err(TxError::UnknownTransaction)
        );
    }

    #[test]
    fn our_request_over_tcp_is_not_retransmitted_but_still_times_out() {
        let mut layer = TransactionLayer::new(Timers::default());
        let t0 = Instant::now();
        let bye = OutgoingRequest {
            method: Method::Bye,
            uri: "sip:a@127.0.0.1:5099".into(),
            headers: vec![("Via".into(), "SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bKbye9".into())],
            body: None,
        };
        let id = layer.send_request(t0, &bye, "z9hG4bKbye9", peer(TCP));
        assert_eq!(drain(&mut layer).0, 1);
        layer.handle_timeout(t0 + Duration::from_secs(4));
        assert_eq!(drain(&mut layer).0, 0, "no Timer E over a reliable transport");
        layer.handle_timeout(t0 + Duration::from_secs(32));
        assert!(matches!(drain(&mut layer).1.as_slice(), [TxEvent::ClientTimeout { tx }] if *tx == id), "Timer F");
    }

    #[test]
    fn a_lost_connection_ends_its_transactions() {
        let mut layer = TransactionLayer::new(Timers::default());
        let t0 = Instant::now();
        layer.handle_request(t0, request("INVITE", ";branch=z9hG4bKlost", "INVITE"), peer(TCP));
        drain(&mut layer);
        let bye = OutgoingRequest { method: Method::Bye, uri: "sip:a@b".into(), headers: vec![], body: None };
        let id = layer.send_request(t0, &bye, "z9hG4bKbye10", peer(TCP));
        drain(&mut layer);
        layer.handle_connection_lost(7);
        assert!(matches!(drain(&mut layer).1.as_slice(), [TxEvent::ClientTimeout { tx }] if *tx == id));
        assert!(layer.is_empty());
    }

    #[test]
    fn rfc2543_requests_without_a_magic_cookie_are_matched_by_their_fields() {
        let mut layer = TransactionLayer::new(Timers::default());
        let t0 = Instant::now();
        // No branch at all (RFC 2543): a retransmission is recognised by Call-ID, From tag, CSeq and top Via.
        layer.handle_request(t0, request("OPTIONS", "", "OPTIONS"), peer(Transport::Udp));
        let tx = server_tx(&drain(&mut layer).1);
        let options = request("OPTIONS", "", "OPTIONS");
        layer.respond(t0, tx, &OutgoingResponse::for_request(&options, 200, "OK")).unwrap();
        drain(&mut layer);
        layer.handle_request(t0, request("OPTIONS", "", "OPTIONS"), peer(Transport::Udp));
        let (sent, events) = drain(&mut layer);
        assert_eq!((sent, events.len()), (1, 0), "absorbed, and the 200 sent again");
        assert_eq!(layer.absorbed_retransmissions, 1);
    }
}
