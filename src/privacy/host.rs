//! The recorded host (the record's `host`): the request's authority, only when `server.hosts`
//! lists it.
//!
//! Owns the list of recordable names ([`ListedHosts`]) and the only way to make a
//! [`RecordedHost`]: finding a request's host in that list. Must never let a name the operator
//! did not list reach a record, and never log a request's host.

use std::sync::Arc;

/// `server.hosts` as a request's host is compared with it: lowercase, without a trailing dot.
#[derive(Clone, Debug, Default)]
pub struct ListedHosts(Box<[Arc<str>]>);

impl ListedHosts {
    /// The configured names (`server.hosts`), in any case, with or without a trailing dot.
    pub fn new(hosts: &[String]) -> ListedHosts {
        ListedHosts(
            hosts
                .iter()
                .map(|h| Arc::from(h.to_ascii_lowercase().trim_end_matches('.')))
                .collect(),
        )
    }

    /// The recorded host for a request's `host` (already normalised: lowercase, without port
    /// or trailing dot), when it is listed; `None` otherwise. Allocates nothing: the name is
    /// the configured one, shared.
    ///
    /// ```
    /// use webprom_edge::privacy::host::ListedHosts;
    /// let hosts = ListedHosts::new(&["Ads.Example.".to_owned()]);
    /// assert_eq!(hosts.recorded("ads.example").unwrap().as_str(), "ads.example");
    /// assert!(hosts.recorded("evil.example").is_none());
    /// ```
    pub fn recorded(&self, host: &str) -> Option<RecordedHost> {
        self.0
            .iter()
            .find(|h| ***h == *host)
            .map(|h| RecordedHost(Arc::clone(h)))
    }
}

/// A host name as the access log records it: one of `server.hosts`, lowercase, without a
/// trailing dot. Made only by [`ListedHosts::recorded`], so no request-supplied name can be one.
///
/// ```compile_fail
/// # use webprom_edge::privacy::host::RecordedHost;
/// let raw = RecordedHost(std::sync::Arc::from("evil.example"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedHost(Arc<str>);

impl RecordedHost {
    /// The name, e.g. `ads.example`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_listed_name_is_recorded() {
        let hosts = ListedHosts::new(&["localhost".to_owned(), "Ads.Example.".to_owned()]);
        // (request's normalised host, recorded)
        let cases: &[(&str, Option<&str>)] = &[
            ("localhost", Some("localhost")),
            ("ads.example", Some("ads.example")),
            ("evil.example", None),
            ("ads.example.evil", None),
            ("", None),
        ];
        for &(host, want) in cases {
            let got = hosts.recorded(host);
            assert_eq!(got.as_ref().map(RecordedHost::as_str), want, "{host:?}");
        }
        assert!(ListedHosts::default().recorded("localhost").is_none());
    }
}
