//! Found by attacking issue 11: a client that goes away before its answer exists (closes the
//! HTTP/1.1 connection, resets the HTTP/2 stream, closes the HTTP/2 connection) while its request
//! is upstream still gets its one record, with status 499, and is counted in
//! `http_requests_total`. Before, the request's record was dropped with the handler: a client
//! could have the upstream do the work and leave no trace in the access log or the metrics.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;

/// How the client leaves while the upstream takes its time.
#[derive(Debug, Clone, Copy)]
enum Leave {
    /// Drops the response future on its connection (HTTP/1.1: the connection closes; HTTP/2:
    /// the stream is reset with CANCEL), then the connection.
    DropRequest,
}

#[tokio::test]
async fn a_client_that_leaves_before_its_answer_still_gets_one_record_and_is_counted() {
    let upstream = Upstream::start().await;
    let proxy = common::Proxy::start(&upstream.url()).await;
    let client = proxy.client();
    let rows = [
        (Proto::H1, Leave::DropRequest, "/slow?ms=3000&row=h1"),
        (Proto::H2, Leave::DropRequest, "/slow?ms=3000&row=h2"),
    ];
    for (proto, leave, path) in rows {
        let mut conn = client.connect(proto).await;
        let mut req = get(path);
        if proto == Proto::H1 {
            *req.uri_mut() = path.parse().unwrap();
            req.headers_mut()
                .insert(http::header::HOST, "localhost".parse().unwrap());
        }
        let sent = tokio::time::timeout(Duration::from_millis(400), conn.try_send(req)).await;
        assert!(
            sent.is_err(),
            "{proto:?} {leave:?}: answered before leaving"
        );
        drop(conn);
    }
    let records = proxy.wait_records(rows.len()).await;
    assert_eq!(records.len(), rows.len(), "{records:?}");
    for (record, (proto, leave, _)) in records.iter().zip(rows) {
        assert_eq!(
            field(record, "status"),
            "499",
            "{proto:?} {leave:?}: {record}"
        );
        assert_eq!(
            field(record, "bytes_sent"),
            "0",
            "{proto:?} {leave:?}: {record}"
        );
        assert_eq!(
            field(record, "path"),
            "/slow",
            "{proto:?} {leave:?}: {record}"
        );
    }
    let (status, metrics) = proxy.admin_get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let counted: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("webprom_edge_http_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(counted as usize, rows.len(), "every request counted once");
}
