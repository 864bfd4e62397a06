//! The HTTPS client the ACME client (instant-acme) speaks to the CA through: hyper over
//! rustls with the project's ring provider, verifying the CA against `acme.ca_roots` (every
//! certificate in the file) or the system's roots, each request bounded by `acme.timeout`,
//! its body included.
//!
//! Must never follow a plain `http://` URL (the directory and every URL it names are https)
//! or wait on the CA without a deadline.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};

/// Why the system's roots cannot serve (none found).
const NO_SYSTEM_ROOTS: &str = "no system CA certificate was found to verify the ACME server (install \
     ca-certificates, or set acme.ca_roots to a PEM file)";

/// The HTTPS client of the ACME account (instant-acme's [`HttpClient`]); clones share
/// their connection pool.
#[derive(Clone)]
pub struct AcmeHttp {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>,
    timeout: Duration,
}

impl AcmeHttp {
    /// A client trusting the certificates of `ca_roots` (PEM), or the system's roots when
    /// `None`; each request (connect, answer and body) gets at most `timeout`. The error says
    /// what is wrong with the roots.
    pub fn new(ca_roots: Option<&Path>, timeout: Duration) -> Result<AcmeHttp, String> {
        let roots = match ca_roots {
            Some(path) => crate::proxy::upstream_tls::load_roots(path)?,
            None => crate::server::tls::system_roots().ok_or_else(|| NO_SYSTEM_ROOTS.to_owned())?,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        Ok(AcmeHttp {
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
        })
    }
}

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let sent = self.client.request(req);
        let timeout = self.timeout;
        Box::pin(async move {
            let answer = async {
                let rsp = sent
                    .await
                    .map_err(|e| instant_acme::Error::Other(Box::new(e)))?;
                let (parts, body) = rsp.into_parts();
                let body = body
                    .collect()
                    .await
                    .map_err(|e| instant_acme::Error::Other(Box::new(e)))?
                    .to_bytes();
                Ok(BytesResponse::from(http::Response::from_parts(
                    parts,
                    Full::new(body),
                )))
            };
            match tokio::time::timeout(timeout, answer).await {
                Ok(result) => result,
                Err(_) => Err(instant_acme::Error::Other(
                    format!("no answer from the ACME server within {timeout:?} (acme.timeout)")
                        .into(),
                )),
            }
        })
    }
}
