//! [`TestCerts`]: a throwaway certificate authority and a server certificate for `127.0.0.1`,
//! made with the `openssl` command, for a TLS `redis-server` ([`RedisServer::start_tls`]).
//!
//! [`RedisServer::start_tls`]: crate::RedisServer::start_tls

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::redis_server::tool_available;

/// A CA and a server certificate signed by it, for the IP address `127.0.0.1`, in a temporary
/// directory removed on drop. Both are EC P-256 and valid for two days.
#[derive(Debug)]
pub struct TestCerts {
    dir: PathBuf,
}

impl TestCerts {
    /// Makes the certificates, or returns `None` when `openssl` is not on the `PATH` (printing
    /// `SKIPPED: openssl not found`).
    ///
    /// # Panics
    ///
    /// When `openssl` is missing and `CI=true`, or when one of its commands fails.
    pub fn generate() -> Option<Self> {
        if !tool_available("openssl", "version") {
            return None;
        }
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "rl-tls-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("a temporary directory for the certificates");
        let certs = Self { dir };
        std::fs::write(
            certs.path("server.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             extendedKeyUsage=serverAuth\n",
        )
        .expect("the server certificate's extensions");
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        certs.openssl(
            &["req", "-x509"],
            &ec,
            &["-keyout", "ca.key", "-out", "ca.crt"],
            &["-days", "2", "-subj", "/CN=rate-limit test CA"],
        );
        certs.openssl(
            &["req"],
            &ec,
            &["-keyout", "server.key", "-out", "server.csr"],
            &["-subj", "/CN=127.0.0.1"],
        );
        certs.openssl(
            &["x509", "-req", "-in", "server.csr"],
            &["-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial"],
            &["-out", "server.crt", "-extfile", "server.ext"],
            &["-days", "2"],
        );
        Some(certs)
    }

    fn openssl(&self, a: &[&str], b: &[&str], c: &[&str], d: &[&str]) {
        let out = Command::new("openssl")
            .args(a)
            .args(b)
            .args(c)
            .args(d)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {a:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A file in the certificates' directory: `ca.crt`, `server.crt`, `server.key`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The CA certificate, PEM: what a client must trust.
    ///
    /// # Panics
    ///
    /// If the file cannot be read.
    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.path("ca.crt")).expect("the CA certificate")
    }

    /// The directory holding them.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for TestCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
