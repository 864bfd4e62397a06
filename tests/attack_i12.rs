//! Red-team findings on the limits and deadlines of issue 12 that no other file holds: what a
//! hostile client can make the proxy's diagnostics say.

mod common;

use std::time::Duration;

use common::{Proxy, Upstream, base_config, frame, set};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CANARY: &str = "canary-7f3e9a";

/// An HPACK literal field without indexing, new name, no Huffman (RFC 7541 §6.2.2).
fn literal(name: &str, value: &str) -> Vec<u8> {
    let mut out = vec![0x00, name.len() as u8];
    out.extend_from_slice(name.as_bytes());
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
    out
}

/// The h2c preface, empty SETTINGS, and one GET on stream 1 carrying `fields`.
fn h2c_get(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    let mut block = vec![0x82, 0x86, 0x84]; // :method GET, :scheme http, :path /
    block.extend(literal(":authority", "localhost"));
    for (name, value) in fields {
        block.extend(literal(name, value));
    }
    out.extend(frame(0x1, 0x5, 1, &block));
    out
}

#[tokio::test]
async fn diagnostics_carry_no_request_value_even_when_asked_for_every_trace() {
    // Each row: fields a client sends that a protocol layer refuses or notes, each carrying
    // the canary. The proxy runs with WEBPROM_EDGE_LOG=trace, the most an operator can ask.
    let rows: [&[(&str, &str)]; 4] = [
        &[("te", "trailers-canary-7f3e9a")],
        &[("connection", "keep-alive, canary-7f3e9a")],
        &[("content-length", "5canary-7f3e9a")],
        &[("x-note", "canary-7f3e9a"), ("user-agent", "canary-7f3e9a")],
    ];
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = set(
        &base_config(dir.path(), &up.url()),
        "server",
        "listen_plain",
        "\"127.0.0.1:0\"",
    );
    std::fs::write(dir.path().join("config.toml"), config).unwrap();
    let proxy = Proxy::spawn_with(dir, |c| {
        c.env("WEBPROM_EDGE_LOG", "trace");
    })
    .await;
    let plain = proxy.plain_addr.expect("plain listener");
    for fields in rows {
        let mut tcp = TcpStream::connect(plain).await.unwrap();
        tcp.write_all(&h2c_get(fields)).await.unwrap();
        // Whatever the answer (a stream reset, a response), read until the proxy has acted.
        let mut buf = vec![0u8; 16 * 1024];
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            while let Ok(n) = tcp.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stderr = proxy.stderr.lock().unwrap().clone();
    // Dependencies still speak at DEBUG (no value there); their TRACE events never pass.
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("DEBUG") && l.contains("h2::")),
        "the proxy did not run at a verbose level"
    );
    let leaks: Vec<&str> = stderr.lines().filter(|l| l.contains(CANARY)).collect();
    assert!(
        leaks.is_empty(),
        "request values in diagnostics: {leaks:#?}"
    );
}
