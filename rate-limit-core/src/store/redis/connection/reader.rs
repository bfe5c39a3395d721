//! The task that reads one socket's replies, hands them to their callers, and writes what the
//! callers could not.

use std::future::poll_fn;
use std::io;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};

use redis::RedisError;

use super::shared::{Shared, lock};
use super::target::Stream;
use crate::store::redis::resp::{self, Parsed};

/// Room the reader asks for before each read.
const READ_CHUNK: usize = 16 * 1024;

/// One socket, and how writers and [`Shared`]'s drop reach its reader.
pub(super) struct Link {
    pub(super) stream: Stream,
    pub(super) signals: Mutex<Signals>,
}

#[derive(Default)]
pub(super) struct Signals {
    pub(super) waker: Option<Waker>,
    /// Commands are waiting in `out` for the socket to take them.
    pub(super) flush: bool,
    /// The socket is no longer in use.
    pub(super) closed: bool,
}

pub(super) enum Event {
    Read,
    Flush,
    Closed,
}

impl Link {
    pub(super) fn signal(&self, set: impl FnOnce(&mut Signals)) {
        let mut signals = lock(&self.signals);
        set(&mut signals);
        if let Some(waker) = signals.waker.take() {
            waker.wake();
        }
    }

    pub(super) fn poll_event(&self, cx: &mut Context<'_>) -> Poll<Event> {
        let flush = {
            let mut signals = lock(&self.signals);
            if signals.closed {
                return Poll::Ready(Event::Closed);
            }
            if !signals
                .waker
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                signals.waker = Some(cx.waker().clone());
            }
            signals.flush
        };
        if flush && self.stream.poll_write_ready(cx).is_ready() {
            return Poll::Ready(Event::Flush);
        }
        self.stream.poll_read_ready(cx).map(|_| Event::Read)
    }
}

/// The reader of one socket: parses replies and hands them out, and writes what callers could
/// not, until the socket fails or is closed.
pub(super) async fn read(link: Arc<Link>, shared: Weak<Shared>, generation: u64) {
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    // Parsed up to `start`; no reply can be whole before `need` bytes follow it.
    let (mut start, mut need) = (0, 0);
    let mut replies = Vec::new();
    let failure = loop {
        match poll_fn(|cx| link.poll_event(cx)).await {
            Event::Closed => return,
            Event::Flush => {
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                let mut state = lock(&shared.state);
                if state.generation != generation {
                    return;
                }
                match link.stream.try_write(&state.out) {
                    Ok(n) => {
                        state.out.drain(..n);
                        if state.out.is_empty() {
                            lock(&link.signals).flush = false;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        state.fail(&e.into());
                        return;
                    }
                }
                continue;
            }
            Event::Read => {}
        }
        if start == buf.len() {
            buf.clear();
            start = 0;
        } else if start > 0 && buf.capacity() - buf.len() < READ_CHUNK / 2 {
            buf.drain(..start);
            start = 0;
        }
        buf.reserve(READ_CHUNK);
        match link.stream.try_read_buf(&mut buf) {
            Ok(0) => break closed(),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => break e.into(),
        }
        if buf.len() - start < need {
            continue;
        }
        let parsed = loop {
            match resp::parse(&buf[start..]) {
                Ok(Parsed::Frame(reply, len)) => {
                    replies.push(reply);
                    start += len;
                }
                Ok(Parsed::Incomplete(n)) => {
                    need = n;
                    break Ok(());
                }
                Err(e) => break Err(e),
            }
        };
        if replies.is_empty() && parsed.is_ok() {
            // A reply not complete yet: nothing to deliver, no lock to take.
            continue;
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let mut state = lock(&shared.state);
        if state.generation != generation {
            return;
        }
        match parsed.and_then(|()| state.deliver(&mut replies)) {
            Ok(()) => {}
            Err(e) => {
                // The stream cannot be read any further: nobody's reply would be theirs.
                state.fail(&e);
                return;
            }
        }
    };
    if let Some(shared) = shared.upgrade() {
        let mut state = lock(&shared.state);
        if state.generation == generation {
            state.fail(&failure);
        }
    }
}

/// The error of calls whose reply will not come: the socket failed, or was closed.
pub(super) fn lost() -> RedisError {
    io::Error::new(
        io::ErrorKind::ConnectionReset,
        "the connection to redis was lost",
    )
    .into()
}

pub(super) fn closed() -> RedisError {
    io::Error::new(io::ErrorKind::UnexpectedEof, "redis closed the connection").into()
}
