//! Where a [`RedisConnection`](super::RedisConnection) connects, and the socket it opens there,
//! logged in (`AUTH`, `SELECT`).

use std::future::poll_fn;
use std::io;
use std::task::{Context, Poll};

use redis::{
    ConnectionAddr, ErrorKind, IntoConnectionInfo, ProtocolVersion, RedisError, RedisResult,
};
use tokio::io::Interest;

use super::reader::closed;
use crate::store::redis::resp::{self, Parsed};

/// Where to connect and how to log in.
pub(super) struct Target {
    pub(super) addr: Addr,
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
    pub(super) db: i64,
}

#[derive(Debug)]
pub(super) enum Addr {
    Tcp(String, u16),
    #[cfg(unix)]
    Unix(std::path::PathBuf),
}

impl Target {
    /// The target of `url`, or its connection info when the `redis` crate must serve it (TLS,
    /// RESP3).
    pub(super) fn of(
        url: impl IntoConnectionInfo,
    ) -> RedisResult<Result<Self, redis::ConnectionInfo>> {
        let info = url.into_connection_info()?;
        let addr = match info.addr() {
            ConnectionAddr::Tcp(host, port) => Addr::Tcp(host.clone(), *port),
            #[cfg(unix)]
            ConnectionAddr::Unix(path) => Addr::Unix(path.clone()),
            _ => return Ok(Err(info)),
        };
        let redis = info.redis_settings();
        if redis.protocol() != ProtocolVersion::RESP2 {
            return Ok(Err(info));
        }
        Ok(Ok(Self {
            addr,
            username: redis.username().map(str::to_owned),
            password: redis.password().map(str::to_owned),
            db: redis.db(),
        }))
    }

    /// Opens a socket and logs in.
    pub(super) async fn open(&self) -> RedisResult<Stream> {
        let stream = match &self.addr {
            Addr::Tcp(host, port) => {
                let tcp = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                tcp.set_nodelay(true)?;
                Stream::Tcp(tcp)
            }
            #[cfg(unix)]
            Addr::Unix(path) => Stream::Unix(tokio::net::UnixStream::connect(path).await?),
        };
        let mut hello = Vec::new();
        let mut replies = 0;
        if let Some(password) = &self.password {
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = &self.username {
                auth.arg(user);
            }
            auth.arg(password).write_packed_command(&mut hello);
            replies += 1;
        }
        if self.db != 0 {
            redis::cmd("SELECT")
                .arg(self.db)
                .write_packed_command(&mut hello);
            replies += 1;
        }
        let mut written = 0;
        while written < hello.len() {
            poll_fn(|cx| stream.poll_write_ready(cx)).await?;
            match stream.try_write(&hello[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
        }
        let mut buf = Vec::new();
        let mut start = 0;
        for n in 0..replies {
            let reply = loop {
                if let Parsed::Frame(v, len) = resp::parse(&buf[start..])? {
                    start += len;
                    break v;
                }
                poll_fn(|cx| stream.poll_read_ready(cx)).await?;
                buf.reserve(512);
                match stream.try_read_buf(&mut buf) {
                    Ok(0) => return Err(closed()),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e.into()),
                }
            };
            match reply.extract_error() {
                // The first reply is `AUTH`'s when there is a password. The server's message
                // names no credential, but is left out all the same.
                Err(_) if n == 0 && self.password.is_some() => {
                    return Err(RedisError::from((
                        ErrorKind::AuthenticationFailed,
                        "redis refused the credentials of the URL",
                    )));
                }
                Err(e) => return Err(e),
                Ok(_) => {}
            }
        }
        Ok(stream)
    }
}

pub(super) enum Stream {
    Tcp(tokio::net::TcpStream),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

impl Stream {
    pub(super) fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(s) => s.try_write(buf),
            #[cfg(unix)]
            Self::Unix(s) => s.try_write(buf),
        }
    }

    /// Reads what the socket holds into `buf`'s spare room. A read that leaves room unfilled
    /// has drained the socket: its readiness is cleared then (as Tokio's own `poll_read`
    /// does), so that the reader parks at once rather than after a read that finds nothing.
    pub(super) fn try_read_buf(&self, buf: &mut Vec<u8>) -> io::Result<usize> {
        let room = buf.capacity() - buf.len();
        let drained = || Err(io::ErrorKind::WouldBlock.into());
        match self {
            Self::Tcp(s) => {
                let n = s.try_read_buf(buf)?;
                if n > 0 && n < room {
                    let _cleared: io::Result<()> = s.try_io(Interest::READABLE, drained);
                }
                Ok(n)
            }
            #[cfg(unix)]
            Self::Unix(s) => {
                let n = s.try_read_buf(buf)?;
                if n > 0 && n < room {
                    let _cleared: io::Result<()> = s.try_io(Interest::READABLE, drained);
                }
                Ok(n)
            }
        }
    }

    pub(super) fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Self::Tcp(s) => s.poll_read_ready(cx),
            #[cfg(unix)]
            Self::Unix(s) => s.poll_read_ready(cx),
        }
    }

    pub(super) fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Self::Tcp(s) => s.poll_write_ready(cx),
            #[cfg(unix)]
            Self::Unix(s) => s.poll_write_ready(cx),
        }
    }
}
