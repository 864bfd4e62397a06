//! The price of the PROXY protocol per connection: reading and judging the header at the start
//! of an accepted loopback connection (`server::proxy_protocol`), the header already in the
//! socket with a TLS record after it, for a version 1 line, a version 2 header, one with
//! 200 bytes of TLVs, and the peek at an untrusted peer's first bytes. The connection's setup
//! is not timed. Run with `cargo bench --bench proxy_protocol`.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use webprom_edge::client_ip::ClientAddr;
use webprom_edge::config::{self, Cidr};
use webprom_edge::server::proxy_protocol::{Accepted, ProxyProtocol};

// The proxy's allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A TLS ClientHello's first bytes: what follows the header.
const AFTER: &[u8] = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03";

fn v2(tlv: usize) -> Vec<u8> {
    use ppp::v2::{Builder, Command, Protocol, Version};
    let src: SocketAddr = "198.51.100.7:40000".parse().expect("addr");
    let dst: SocketAddr = "127.0.0.1:443".parse().expect("addr");
    let mut b =
        Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, (src, dst));
    if tlv > 0 {
        b = b.write_tlv(0xE0, &vec![b'T'; tlv]).expect("tlv");
    }
    b.build().expect("header")
}

fn accept(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).expect("bind");
    let addr = listener.local_addr().expect("addr");
    let trusted = [Cidr("127.0.0.1/32".parse().expect("cidr"))];
    let rules = ProxyProtocol::new(config::ProxyProtocol::Any, &trusted).expect("on");
    let rows: [(&str, &str, Vec<u8>); 4] = [
        (
            "version 1 line",
            "127.0.0.1",
            b"PROXY TCP4 198.51.100.7 127.0.0.1 40000 443\r\n".to_vec(),
        ),
        ("version 2 header", "127.0.0.1", v2(0)),
        ("version 2 header, 200 bytes of TLVs", "127.0.0.1", v2(200)),
        ("untrusted peer, no header (peek)", "127.0.0.2", Vec::new()),
    ];
    for (name, from, header) in rows {
        c.bench_function(&format!("PROXY protocol accept: {name}"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let socket = TcpSocket::new_v4().expect("socket");
                        socket
                            .bind(format!("{from}:0").parse().expect("from"))
                            .expect("bind");
                        let mut client: TcpStream = socket.connect(addr).await.expect("connect");
                        client.write_all(&header).await.expect("write");
                        client.write_all(AFTER).await.expect("write");
                        let (mut tcp, peer) = listener.accept().await.expect("accept");
                        // Both writes in the socket before the clock starts.
                        let mut seen = [0u8; 512];
                        while tcp.peek(&mut seen).await.expect("peek") < header.len() + AFTER.len()
                        {
                            tokio::task::yield_now().await;
                        }
                        let by = tokio::time::Instant::now() + Duration::from_secs(5);
                        let start = Instant::now();
                        let accepted = rules.accept(&mut tcp, ClientAddr::new(peer.ip()), by).await;
                        total += start.elapsed();
                        assert!(matches!(accepted, Accepted::Peer(_)), "{name}");
                        black_box(accepted);
                    }
                    total
                })
            })
        });
    }
}

criterion_group!(benches, accept);
criterion_main!(benches);
