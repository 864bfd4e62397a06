//! One ACME order (RFC 8555 §7.4) for one name: the order, its authorizations' challenges
//! published through [`Challenges`] (memory and storage, so any instance of a fleet answers),
//! the CSR from a new ECDSA P-256 key, finalization and the certificate chain.
//!
//! Must never log or return a key authorization or a token, and never leave a challenge
//! response published after the order ends, whichever way it ends (the caller withdraws what
//! [`Published`] lists).

use std::time::Duration;

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewOrder, OrderStatus, RetryPolicy,
};

use super::Challenges;
use crate::config::AcmeChallenge;

/// A certificate just issued.
pub struct Issued {
    /// The chain, leaf first, PEM.
    pub chain_pem: String,
    /// Its new private key, PKCS#8 PEM.
    pub key_pem: zeroize::Zeroizing<String>,
}

/// Why an order did not end with a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderError {
    /// The CA refused: its problem document's type (RFC 8555 §6.7, without the
    /// `urn:ietf:params:acme:error:` prefix) and detail.
    Rejected {
        /// `rejectedIdentifier`, `unauthorized`, `connection`, …
        problem: String,
        /// The CA's explanation.
        detail: String,
    },
    /// The CA could not be reached or did not answer in time, or a local step failed.
    Failed(String),
}

impl std::fmt::Display for OrderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OrderError::Rejected { problem, detail } => {
                write!(f, "the CA refused ({problem}): {detail}")
            }
            OrderError::Failed(why) => f.write_str(why),
        }
    }
}

const PROBLEM_PREFIX: &str = "urn:ietf:params:acme:error:";

impl From<instant_acme::Error> for OrderError {
    fn from(e: instant_acme::Error) -> Self {
        match e {
            instant_acme::Error::Api(problem) => problem_error(&problem),
            instant_acme::Error::Timeout(_) => {
                OrderError::Failed("the order was not ready in time".to_owned())
            }
            other => OrderError::Failed(with_hint(causes(&other))),
        }
    }
}

/// `why` (a failure to reach the CA) led by what to look at when it is one an operator causes:
/// a CA certificate that does not verify (`acme.ca_roots`), or a CA that cannot be connected
/// to (`acme.directory`).
fn with_hint(why: String) -> String {
    let hint = if why.contains("invalid peer certificate") {
        if why.contains("CaUsedAsEndEntity") {
            "the ACME server's certificate is a CA certificate, not a server's: give its \
             listener a leaf certificate signed by the CA in acme.ca_roots"
        } else {
            "the ACME server's certificate does not verify against acme.ca_roots (or, unset, \
             the system's roots)"
        }
    } else if why.contains("tcp connect error") || why.contains("dns error") {
        "cannot connect to the ACME server at acme.directory"
    } else {
        return why;
    };
    format!("{hint}: {why}")
}

/// An error document as an [`OrderError::Rejected`], its subproblems' details appended.
fn problem_error(problem: &instant_acme::Problem) -> OrderError {
    let kind = problem.r#type.as_deref().unwrap_or("unknown");
    let mut detail = problem.detail.clone().unwrap_or_default();
    for sub in &problem.subproblems {
        if let Some(d) = &sub.detail {
            detail.push_str("; ");
            detail.push_str(d);
        }
    }
    OrderError::Rejected {
        problem: kind.strip_prefix(PROBLEM_PREFIX).unwrap_or(kind).to_owned(),
        detail,
    }
}

/// An error and its sources, `: `-separated, each text once.
pub fn causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// A challenge response published for an order, to withdraw when it ends.
pub enum Published {
    /// An HTTP-01 response by token.
    Http01(String),
    /// A TLS-ALPN-01 response by name.
    TlsAlpn01(String),
}

/// How long the CA may take to validate and to issue, each.
const POLL_LIMIT: Duration = Duration::from_secs(120);

impl OrderError {
    /// The error with each of `secrets` (a challenge's key authorization, its token) replaced by
    /// `[redacted]`: CAs quote them in their problem details (Boulder's "Fetching
    /// http://…/.well-known/acme-challenge/{token}", pebble's "did not match this challenge
    /// \"{key authorization}\" != …"), and the detail is logged.
    pub fn redacted(self, secrets: &[String]) -> OrderError {
        let scrub = |mut text: String| {
            for secret in secrets.iter().filter(|s| !s.is_empty()) {
                if text.contains(secret.as_str()) {
                    text = text.replace(secret.as_str(), "[redacted]");
                }
            }
            text
        };
        match self {
            OrderError::Rejected { problem, detail } => OrderError::Rejected {
                problem,
                detail: scrub(detail),
            },
            OrderError::Failed(why) => OrderError::Failed(scrub(why)),
        }
    }
}

/// Orders a certificate for `name` through `challenge`; each response published is pushed
/// onto `published` before the CA is told it is ready. The error never holds a token or a key
/// authorization ([`OrderError::redacted`]).
pub async fn issue(
    account: &Account,
    name: &str,
    challenge: AcmeChallenge,
    challenges: &Challenges,
    published: &mut Vec<Published>,
) -> Result<Issued, OrderError> {
    // Key authorizations first: each holds its token.
    let mut secrets = Vec::new();
    issue_quoting(
        account,
        name,
        challenge,
        challenges,
        published,
        &mut secrets,
    )
    .await
    .map_err(|e| e.redacted(&secrets))
}

/// [`issue`], its error as the CA said it; each key authorization and token it publishes is
/// pushed onto `secrets`, in that order.
async fn issue_quoting(
    account: &Account,
    name: &str,
    challenge: AcmeChallenge,
    challenges: &Challenges,
    published: &mut Vec<Published>,
    secrets: &mut Vec<String>,
) -> Result<Issued, OrderError> {
    let identifiers = [Identifier::Dns(name.to_owned())];
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    let kind = match challenge {
        AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        AcmeChallenge::Http01 => ChallengeType::Http01,
    };
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization?;
        match authorization.status {
            AuthorizationStatus::Valid => continue,
            AuthorizationStatus::Pending => {}
            other => {
                return Err(OrderError::Rejected {
                    problem: "authorization".to_owned(),
                    detail: format!("the authorization is {other:?}"),
                });
            }
        }
        let mut handle =
            authorization
                .challenge(kind.clone())
                .ok_or_else(|| OrderError::Rejected {
                    problem: "unsupportedChallenge".to_owned(),
                    detail: format!("the CA offers no {} challenge", challenge_name(challenge)),
                })?;
        let key_authorization = handle.key_authorization();
        secrets.push(key_authorization.as_str().to_owned());
        secrets.push(handle.token.clone());
        match challenge {
            AcmeChallenge::TlsAlpn01 => {
                published.push(Published::TlsAlpn01(name.to_owned()));
                challenges
                    .publish_tls_alpn01(name, key_authorization.as_str())
                    .await
                    .map_err(OrderError::Failed)?;
            }
            AcmeChallenge::Http01 => {
                published.push(Published::Http01(handle.token.clone()));
                challenges
                    .publish_http01(&handle.token, key_authorization.as_str())
                    .await
                    .map_err(OrderError::Failed)?;
            }
        }
        handle.set_ready().await?;
    }
    let polling = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(POLL_LIMIT);
    let status = order.poll_ready(&polling).await?;
    if status != OrderStatus::Ready {
        return Err(invalid_reason(&mut order).await);
    }
    let key = rcgen::KeyPair::generate().map_err(|e| OrderError::Failed(e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()])
        .map_err(|e| OrderError::Failed(e.to_string()))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .map_err(|e| OrderError::Failed(e.to_string()))?;
    order.finalize_csr(csr.der()).await?;
    let chain_pem = order.poll_certificate(&polling).await?;
    Ok(Issued {
        chain_pem,
        key_pem: zeroize::Zeroizing::new(key.serialize_pem()),
    })
}

/// The config's name of a challenge type.
pub fn challenge_name(challenge: AcmeChallenge) -> &'static str {
    match challenge {
        AcmeChallenge::TlsAlpn01 => "tls-alpn-01",
        AcmeChallenge::Http01 => "http-01",
    }
}

/// Why an order became invalid: the first failed challenge's error, as the CA states it.
async fn invalid_reason(order: &mut instant_acme::Order) -> OrderError {
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authorization)) = authorizations.next().await {
        if authorization.refresh().await.is_err() {
            continue;
        }
        if let Some(problem) = authorization
            .challenges
            .iter()
            .find_map(|c| c.error.as_ref())
        {
            return problem_error(problem);
        }
    }
    OrderError::Rejected {
        problem: "orderInvalid".to_owned(),
        detail: "the order became invalid".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_to_reach_the_ca_names_the_key_to_look_at() {
        // (the causes, the start of the detail logged)
        let rows = [
            (
                "client error (Connect): invalid peer certificate: Other(OtherError(CaUsedAsEndEntity))",
                "the ACME server's certificate is a CA certificate, not a server's",
            ),
            (
                "client error (Connect): invalid peer certificate: UnknownIssuer",
                "the ACME server's certificate does not verify against acme.ca_roots",
            ),
            (
                "client error (Connect): tcp connect error: Connection refused (os error 111)",
                "cannot connect to the ACME server at acme.directory: client error",
            ),
            (
                "client error (Connect): dns error: failed to lookup address information",
                "cannot connect to the ACME server at acme.directory: client error",
            ),
            ("no answer from the ACME server within 5s", "no answer from"),
        ];
        for (why, starts) in rows {
            let detail = with_hint(why.to_owned());
            assert!(detail.starts_with(starts), "{why}: {detail}");
            assert!(detail.ends_with(why), "{why}: {detail}");
        }
    }

    #[test]
    fn an_error_never_quotes_a_token_or_a_key_authorization() {
        let token = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0";
        let key_authorization = format!("{token}.9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI");
        let secrets = [key_authorization.clone(), token.to_owned()];
        // (detail as the CA or a local step said it, detail kept)
        let rows = [
            // Boulder, HTTP-01 unreachable.
            (
                format!(
                    "127.0.0.1: Fetching http://a.example/.well-known/acme-challenge/{token}: Connection refused"
                ),
                "127.0.0.1: Fetching http://a.example/.well-known/acme-challenge/[redacted]: Connection refused".to_owned(),
            ),
            // pebble, HTTP-01 wrong answer.
            (
                format!(
                    "The key authorization file from the server did not match this challenge \"{key_authorization}\" != \"nope\""
                ),
                "The key authorization file from the server did not match this challenge \"[redacted]\" != \"nope\"".to_owned(),
            ),
            // Quoted twice.
            (
                format!("{token} {token}"),
                "[redacted] [redacted]".to_owned(),
            ),
            (
                "Incorrect validation certificate for tls-alpn-01 challenge".to_owned(),
                "Incorrect validation certificate for tls-alpn-01 challenge".to_owned(),
            ),
            (String::new(), String::new()),
        ];
        for (said, kept) in rows {
            let rejected = OrderError::Rejected {
                problem: "unauthorized".to_owned(),
                detail: said.clone(),
            };
            assert_eq!(
                rejected.redacted(&secrets),
                OrderError::Rejected {
                    problem: "unauthorized".to_owned(),
                    detail: kept.clone()
                },
                "{kept}"
            );
            assert_eq!(
                OrderError::Failed(said).redacted(&secrets),
                OrderError::Failed(kept.clone()),
                "{kept}"
            );
        }
        // No secret yet (the order failed before a challenge): nothing changes.
        let e = OrderError::Failed("x".to_owned());
        assert_eq!(e.clone().redacted(&[String::new()]), e);
    }

    #[test]
    fn a_problem_document_is_named_by_its_short_type_and_detail() {
        // (type, detail, subproblem details, problem named, detail said)
        type Row<'a> = (
            Option<&'a str>,
            Option<&'a str>,
            &'a [&'a str],
            &'a str,
            &'a str,
        );
        let rows: [Row; 4] = [
            (
                Some("urn:ietf:params:acme:error:rejectedIdentifier"),
                Some("policy forbids issuing for name"),
                &[],
                "rejectedIdentifier",
                "policy forbids issuing for name",
            ),
            (
                Some("urn:ietf:params:acme:error:rateLimited"),
                Some("too many"),
                &["a.example: too many", "b.example: too many"],
                "rateLimited",
                "too many; a.example: too many; b.example: too many",
            ),
            (Some("about:blank"), None, &[], "about:blank", ""),
            (None, Some("odd"), &[], "unknown", "odd"),
        ];
        for (kind, detail, subs, want_problem, want_detail) in rows {
            let json = serde_json::json!({
                "type": kind,
                "detail": detail,
                "subproblems": subs.iter().map(|d| serde_json::json!({
                    "type": "urn:ietf:params:acme:error:rateLimited",
                    "detail": d,
                    "identifier": {"type": "dns", "value": "a.example"},
                })).collect::<Vec<_>>(),
            });
            let problem: instant_acme::Problem = serde_json::from_value(json).unwrap();
            assert_eq!(
                problem_error(&problem),
                OrderError::Rejected {
                    problem: want_problem.to_owned(),
                    detail: want_detail.to_owned()
                },
                "{kind:?}"
            );
        }
    }
}
