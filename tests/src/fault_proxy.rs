//! [`FaultProxy`]: a TCP relay on loopback in front of a Redis server, which forwards every
//! request and reply unless told to inject a [`Fault`] into one of them.
//!
//! The relay reads RESP frames, not bytes: it knows which request each reply answers (replies
//! come back in request order on a connection), so a fault can target the reply of one
//! request while the replies before it are relayed. Faults are one-shot rules matched on the
//! request's command name; adding a fault (latency, a stall, a reset, a dropped request) is a
//! variant of [`Fault`] and the code that applies it in `relay`. Link-wide states (latency,
//! stalled replies, every connection reset) apply to every connection until changed.

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does to a request that a rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Forwards the request to the server, waits for its reply, and closes the client's
    /// connection instead of relaying that reply (and the server connection with it): the
    /// server acted on the request, the client never learns how.
    DropReply,
}

/// The state of the link every connection of a proxy goes through, set with
/// [`FaultProxy::set_latency`] and [`FaultProxy::stall`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Link {
    /// Added to every reply: each is held this long after it arrives, while the relay goes on
    /// reading (a link's delay, not a queue).
    latency: Duration,
    /// Replies are not relayed (nor read from the server) until the stall ends.
    stalled: bool,
    /// Every connection is reset (closed with an RST, the client's and the server's), and each
    /// new one as soon as it is accepted, until the resets end.
    reset: bool,
}

/// A relay from `127.0.0.1:<port>` to a server on loopback, run on a thread of its own (a
/// Tokio runtime independent of the test's). Stopped, with every connection it relays, on
/// drop.
#[derive(Debug)]
pub struct FaultProxy {
    port: u16,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    link: watch::Sender<Link>,
    thread: Option<thread::JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// One-shot rules, oldest first: a request meets the first rule naming its command.
    rules: VecDeque<(String, Fault)>,
    /// Requests forwarded to the server, per command name (upper case).
    forwarded: HashMap<String, usize>,
    /// Faults applied so far.
    fired: usize,
    /// Client connections accepted so far.
    accepted: usize,
    /// Connections reset so far.
    resets: usize,
}

impl FaultProxy {
    /// Starts a relay to `127.0.0.1:upstream` on a free loopback port.
    ///
    /// # Panics
    ///
    /// If no port can be bound or the relay's thread cannot start.
    pub fn start(upstream: u16) -> Self {
        let std_listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .expect("a loopback port for the proxy");
        std_listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let port = std_listener
            .local_addr()
            .expect("the proxy's address")
            .port();
        let shared = Arc::new(Shared::default());
        let (stop, stopped) = watch::channel(false);
        let (link, link_rx) = watch::channel(Link::default());
        let upstream = SocketAddr::from((Ipv4Addr::LOCALHOST, upstream));
        let relay_shared = Arc::clone(&shared);
        let thread = thread::Builder::new()
            .name(format!("fault-proxy-{port}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for the proxy");
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(std_listener).expect("a Tokio listener");
                    accept(listener, upstream, relay_shared, stopped, link_rx).await;
                });
            })
            .expect("the proxy's thread");
        Self {
            port,
            shared,
            stop,
            link,
            thread: Some(thread),
        }
    }

    /// Holds every reply `latency` before relaying it (zero: none), on every connection.
    pub fn set_latency(&self, latency: Duration) {
        self.link.send_modify(|l| l.latency = latency);
    }

    /// While `stalled`, relays no reply: requests still reach the server, its answers wait in
    /// the proxy's socket (a link that stopped delivering). Relayed again once unstalled.
    pub fn stall(&self, stalled: bool) {
        self.link.send_modify(|l| l.stalled = stalled);
    }

    /// While `reset`, resets every connection it relays (an RST to the client: a peer that
    /// crashed, a middlebox that dropped the flow) and every new one as it is accepted; a
    /// request already forwarded may have run, its reply is lost. Relays again once unset.
    pub fn reset_connections(&self, reset: bool) {
        self.link.send_modify(|l| l.reset = reset);
    }

    /// Connections reset so far, by [`reset_connections`](Self::reset_connections).
    pub fn resets(&self) -> usize {
        self.shared.lock().resets
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The next request whose command is `command` (`EVALSHA`; any case) meets `fault`; once.
    pub fn inject(&self, command: &str, fault: Fault) {
        self.shared
            .lock()
            .rules
            .push_back((command.to_ascii_uppercase(), fault));
    }

    /// Requests of `command` forwarded to the server so far (a request a fault drops on its
    /// way is not counted; one whose reply is dropped is).
    pub fn forwarded(&self, command: &str) -> usize {
        let state = self.shared.lock();
        state
            .forwarded
            .get(&command.to_ascii_uppercase())
            .copied()
            .unwrap_or(0)
    }

    /// Client connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared.lock().accepted
    }

    /// Waits until `n` faults have been applied in all, for at most `limit`; whether they were.
    pub fn wait_fired(&self, n: usize, limit: Duration) -> bool {
        let state = self.shared.lock();
        let (state, _) = self
            .shared
            .changed
            .wait_timeout_while(state, limit, |s| s.fired < n)
            .unwrap_or_else(PoisonError::into_inner);
        state.fired >= n
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a request on its way to the server, and takes the rule it meets, if any.
    fn on_request(&self, command: &str) -> Option<Fault> {
        let mut state = self.lock();
        *state.forwarded.entry(command.to_owned()).or_default() += 1;
        let at = state.rules.iter().position(|(c, _)| c == command)?;
        state.rules.remove(at).map(|(_, fault)| fault)
    }

    fn on_fired(&self) {
        self.lock().fired += 1;
        self.changed.notify_all();
    }
}

async fn accept(
    listener: TcpListener,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
    link: watch::Receiver<Link>,
) {
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                shared.lock().accepted += 1;
                if link.borrow().reset {
                    reset(client, &shared);
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream).await else { continue };
                let (shared, stopped) = (Arc::clone(&shared), stopped.clone());
                tokio::spawn(relay(client, server, shared, stopped, link.clone()));
            }
        }
    }
}

/// Relays one connection, frame by frame, until either side closes, a fault closes it, or the
/// proxy stops. Dropping both streams closes both connections.
async fn relay(
    mut client: TcpStream,
    mut server: TcpStream,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
    mut link: watch::Receiver<Link>,
) {
    let (mut requests, mut replies) = (Vec::new(), Vec::new());
    // Requests forwarded and replies relayed on this connection; the reply that a
    // `DropReply` fault withholds, by its index.
    let (mut sent, mut answered) = (0u64, 0u64);
    let mut withhold: Option<u64> = None;
    // Replies held for the link's latency, with when each is due, oldest first.
    let mut held: VecDeque<(tokio::time::Instant, Vec<u8>)> = VecDeque::new();
    loop {
        let next_due = held.front().map(|(due, _)| *due);
        tokio::select! {
            _ = stopped.changed() => return,
            changed = link.changed() => {
                if changed.is_err() {
                    return;
                }
                if link.borrow().reset {
                    // The server connection closes on drop; the client sees an RST.
                    return reset(client, &shared);
                }
            }
            () = tokio::time::sleep_until(next_due.unwrap_or_else(tokio::time::Instant::now)),
                if next_due.is_some() => {
                let now = tokio::time::Instant::now();
                while held.front().is_some_and(|(due, _)| *due <= now) {
                    let Some((_, frame)) = held.pop_front() else { break };
                    if client.write_all(&frame).await.is_err() {
                        return;
                    }
                }
            }
            read = client.read_buf(&mut requests), if withhold.is_none() => {
                if !matches!(read, Ok(n) if n > 0) {
                    return;
                }
                while let Some(end) = frame_end(&requests, 0) {
                    let frame: Vec<u8> = requests.drain(..end).collect();
                    let fault = shared.on_request(&command_name(&frame));
                    if server.write_all(&frame).await.is_err() {
                        return;
                    }
                    sent += 1;
                    match fault {
                        // Nothing after this request reaches the server.
                        Some(Fault::DropReply) => {
                            withhold = Some(sent - 1);
                            break;
                        }
                        None => {}
                    }
                }
            }
            read = server.read_buf(&mut replies), if !link.borrow().stalled => {
                if !matches!(read, Ok(n) if n > 0) {
                    return;
                }
                let latency = link.borrow().latency;
                let due = tokio::time::Instant::now() + latency;
                while let Some(end) = frame_end(&replies, 0) {
                    // RESP3 pushes answer no request.
                    let push = replies.first() == Some(&b'>');
                    if !push && withhold == Some(answered) {
                        shared.on_fired();
                        return;
                    }
                    let frame: Vec<u8> = replies.drain(..end).collect();
                    if latency.is_zero() && held.is_empty() {
                        if client.write_all(&frame).await.is_err() {
                            return;
                        }
                    } else {
                        held.push_back((due, frame));
                    }
                    answered += u64::from(!push);
                }
            }
        }
    }
}

/// Closes `client` with an RST rather than a FIN: no linger, so the kernel discards what it
/// had not sent and resets the connection.
fn reset(client: TcpStream, shared: &Shared) {
    // A socket that refuses the option is closed the ordinary way: still a lost connection.
    let _ = client.set_zero_linger();
    drop(client);
    shared.lock().resets += 1;
}

/// The upper-case command name of a request: the first element of a RESP array, or the
/// first word of an inline command.
fn command_name(frame: &[u8]) -> String {
    let name = if frame.first() == Some(&b'*') {
        // `*N\r\n$len\r\nNAME\r\n...`
        let Some(header) = line_end(frame, 0) else {
            return String::new();
        };
        let Some(len_end) = line_end(frame, header) else {
            return String::new();
        };
        let len: usize = std::str::from_utf8(&frame[header + 1..len_end - 2])
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        frame.get(len_end..len_end + len).unwrap_or_default()
    } else {
        frame
            .split(|b| b.is_ascii_whitespace())
            .next()
            .unwrap_or_default()
    };
    String::from_utf8_lossy(name).to_ascii_uppercase()
}

/// The end (exclusive) of the RESP2/RESP3 frame starting at `at`, once `buf` holds all of it.
fn frame_end(buf: &[u8], at: usize) -> Option<usize> {
    let kind = *buf.get(at)?;
    let header = line_end(buf, at)?;
    let number = || -> Option<i64> {
        std::str::from_utf8(&buf[at + 1..header - 2])
            .ok()?
            .parse()
            .ok()
    };
    match kind {
        // A length, then that many bytes and CRLF (`-1`: null).
        b'$' | b'!' | b'=' => match usize::try_from(number()?) {
            Ok(len) => (buf.len() >= header + len + 2).then_some(header + len + 2),
            Err(_) => Some(header),
        },
        // A count, then that many frames (maps and attributes: twice that many).
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let Ok(count) = usize::try_from(number()?) else {
                return Some(header);
            };
            let count = if matches!(kind, b'%' | b'|') {
                2 * count
            } else {
                count
            };
            let mut end = header;
            for _ in 0..count {
                end = frame_end(buf, end)?;
            }
            // An attribute annotates the frame after it.
            if kind == b'|' {
                frame_end(buf, end)
            } else {
                Some(end)
            }
        }
        // Simple strings, errors, numbers, null, booleans, doubles, big numbers; and an inline
        // command, which is one line too.
        _ => Some(header),
    }
}

/// The index after the CRLF ending the line that starts at `at`.
fn line_end(buf: &[u8], at: usize) -> Option<usize> {
    buf.get(at..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|i| at + i + 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_cut_where_they_end() {
        let request = b"*2\r\n$7\r\nEVALSHA\r\n$1\r\nx\r\n*1\r\n$4\r\nPING\r\n";
        let first = frame_end(request, 0).unwrap();
        assert_eq!(&request[first..], b"*1\r\n$4\r\nPING\r\n");
        assert_eq!(command_name(&request[..first]), "EVALSHA");
        assert_eq!(frame_end(&request[..first - 1], 0), None);
        assert_eq!(command_name(b"ping\r\n"), "PING");
        let replies = b"$-1\r\n%1\r\n+a\r\n:1\r\n*2\r\n$3\r\nabc\r\n_\r\n";
        assert_eq!(frame_end(replies, 0), Some(5));
        assert_eq!(frame_end(replies, 5), Some(17));
        assert_eq!(frame_end(replies, 17), Some(replies.len()));
    }
}
