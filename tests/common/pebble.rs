//! A real ACME server for the tests: Debian's `pebble` with `pebble-challtestsrv` as its DNS
//! (every name is 127.0.0.1), all on loopback ports, pebble's HTTPS served with a certificate
//! from a CA generated here (`ca_roots`, for `acme.ca_roots`). Pebble validates TLS-ALPN-01 on
//! `tls_port` and HTTP-01 on `http_port` of 127.0.0.1: start the proxy there.
//!
//! `Pebble::start` returns `None` (the test skips, with a message naming the package) when
//! pebble is not installed, unless `WEBPROM_EDGE_REQUIRE_EXTERNAL=1`, where it fails.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

/// How pebble is to behave.
#[derive(Clone, Debug, Default)]
pub struct PebbleOptions {
    /// The port of 127.0.0.1 it validates TLS-ALPN-01 on (the proxy's TLS listener).
    pub tls_port: u16,
    /// The port of 127.0.0.1 it validates HTTP-01 on (`acme.http_listen`).
    pub http_port: u16,
    /// The lifetime of the certificates it issues, in seconds (`None`: pebble's 5 years).
    pub validity_secs: Option<u64>,
    /// Names it refuses to issue for (`rejectedIdentifier`).
    pub blocklist: Vec<String>,
}

/// pebble and pebble-challtestsrv, killed when dropped.
pub struct Pebble {
    pub dir: tempfile::TempDir,
    /// The ACME directory URL (`acme.directory`).
    pub directory: String,
    /// The CA of pebble's HTTPS certificate, PEM (`acme.ca_roots`).
    pub ca_roots: PathBuf,
    /// pebble's management interface (the issuing root at `/roots/0`).
    pub management: SocketAddr,
    pebble: Child,
    dns: Child,
    log: Arc<Mutex<String>>,
}

/// A free port of 127.0.0.1 (bound, then let go).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A free UDP and TCP port of 127.0.0.1 (DNS).
fn free_dns_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn collect(child: &mut Child, log: &Arc<Mutex<String>>) {
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    for pipe in [
        Box::new(out) as Box<dyn std::io::Read + Send>,
        Box::new(err) as Box<dyn std::io::Read + Send>,
    ] {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut all = log.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });
    }
}

impl Pebble {
    /// Starts pebble-challtestsrv (DNS only) and pebble; waits until pebble's directory
    /// answers. `None`: pebble is not installed (skipped).
    pub async fn start(options: PebbleOptions) -> Option<Pebble> {
        if !super::external("pebble", "pebble") || !super::external("pebble-challtestsrv", "pebble")
        {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        // pebble's HTTPS: a CA made here and a certificate for 127.0.0.1 and localhost.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "pebble test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .unwrap();
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        let ca_roots = dir.path().join("ca.pem");
        std::fs::write(&ca_roots, ca.pem()).unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();

        let dns_port = free_dns_port();
        let log = Arc::new(Mutex::new(String::new()));
        let mut dns = Command::new("pebble-challtestsrv")
            .args([
                "-dns01",
                &format!("127.0.0.1:{dns_port}"),
                "-management",
                &format!("127.0.0.1:{}", free_port()),
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start pebble-challtestsrv");
        collect(&mut dns, &log);

        let (acme_port, management_port) = (free_port(), free_port());
        let mut config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{acme_port}"),
                "managementListenAddress": format!("127.0.0.1:{management_port}"),
                "certificate": dir.path().join("cert.pem"),
                "privateKey": dir.path().join("key.pem"),
                "httpPort": options.http_port,
                "tlsPort": options.tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
                "domainBlocklist": options.blocklist,
            }
        });
        if let Some(secs) = options.validity_secs {
            config["pebble"]["certificateValidityPeriod"] = secs.into();
        }
        let config_path = dir.path().join("pebble.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let mut pebble = Command::new("pebble")
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start pebble");
        collect(&mut pebble, &log);
        let pebble = Pebble {
            directory: format!("https://127.0.0.1:{acme_port}/dir"),
            ca_roots,
            management: SocketAddr::from(([127, 0, 0, 1], management_port)),
            dir,
            pebble,
            dns,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let acme = SocketAddr::from(([127, 0, 0, 1], acme_port));
        while pebble.get(acme, "/dir").await.is_none() {
            assert!(
                Instant::now() < deadline,
                "pebble did not start:\n{}",
                pebble.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Some(pebble)
    }

    /// Everything pebble and pebble-challtestsrv printed.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// How many orders pebble has accepted (its "Added order" log lines).
    pub fn orders(&self) -> usize {
        self.log().matches("Added order").count()
    }

    /// pebble's issuing root, PEM (management interface `/roots/0`).
    pub async fn root_pem(&self) -> String {
        self.get(self.management, "/roots/0")
            .await
            .expect("pebble's root")
    }

    /// Sends SIGSTOP (frozen: connections open, nothing answered) or SIGCONT to pebble.
    pub fn signal(&self, sig: &str) {
        super::signal_pid(self.pebble.id(), sig);
    }

    /// A GET over HTTPS to pebble, trusting `ca_roots`; `None` if it does not answer 200.
    async fn get(&self, addr: SocketAddr, path: &str) -> Option<String> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&self.ca_roots).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = TcpStream::connect(addr).await.ok()?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .ok()?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .ok()?;
        tokio::spawn(conn);
        let req = http::Request::get(path)
            .header("host", addr.to_string())
            .body(Full::new(Bytes::new()))
            .ok()?;
        let resp = tokio::time::timeout(Duration::from_secs(5), send.send_request(req))
            .await
            .ok()?
            .ok()?;
        if resp.status() != 200 {
            return None;
        }
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        Some(String::from_utf8_lossy(&body).into_owned())
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        // A frozen pebble is killed all the same (SIGKILL needs no SIGCONT).
        for child in [&mut self.pebble, &mut self.dns] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
