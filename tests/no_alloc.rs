//! The per-request privacy functions allocate nothing on the heap.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::IpAddr;
use std::path::Path;

#[path = "common/mmdb.rs"]
mod mmdb;

use webprom_edge::client_ip::ClientAddr;
use webprom_edge::privacy::geo::GeoDb;
use webprom_edge::privacy::keys::{Key, pseudonym};
use webprom_edge::privacy::net::truncate;

/// Counts allocations made by the current thread.
struct Counting;

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations(f: impl FnOnce()) -> usize {
    let before = ALLOCS.with(Cell::get);
    f();
    ALLOCS.with(Cell::get) - before
}

#[test]
fn hot_path_does_not_allocate() {
    // The counter sees allocations at all.
    assert!(allocations(|| drop(std::hint::black_box(vec![1u8; 8]))) > 0);
    let key = Key::from_bytes([9; 32]);
    let dir = tempfile::tempdir().unwrap();
    let mut dbs = Vec::new();
    for schema in [mmdb::Schema::MaxMind, mmdb::Schema::Flat] {
        let path = dir.path().join(format!("{schema:?}.mmdb"));
        mmdb::write_country_db(
            &path,
            &[("203.0.113.0/24", "AL"), ("2001:db8::/32", "NL")],
            schema,
        );
        dbs.push(GeoDb::open(&path).unwrap());
    }
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/geo/country.mmdb");
    if let Ok(db) = GeoDb::open(&shipped) {
        dbs.push(db);
    }
    // (address): v4, v6, IPv4-mapped, and a miss.
    let addrs: Vec<IpAddr> = [
        "203.0.113.7",
        "2001:db8:1:2::5",
        "::ffff:203.0.113.7",
        "192.0.2.1",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    for &ip in &addrs {
        let client = ClientAddr::new(ip);
        let n = allocations(|| {
            std::hint::black_box(pseudonym(&key, client, 64));
            std::hint::black_box(truncate(client, 24, 48));
            for db in &dbs {
                std::hint::black_box(db.lookup(client));
            }
        });
        assert_eq!(
            n, 0,
            "heap allocations for one request's privacy work ({ip})"
        );
    }
}

#[test]
fn a_user_agent_cache_hit_with_client_hints_does_not_allocate() {
    use webprom_edge::privacy::ua::{Browser, UaParser};
    let parser = UaParser::new(64).unwrap();
    let ua: &[u8] = b"Mozilla/5.0 (Linux; Android 14; Pixel 8 Build/AP2A.240805.005; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/127.0.6533.103 Mobile Safari/537.36 Instagram 344.0.0.34.90 Android (34/14; 420dpi; 1080x2400; Google/google; Pixel 8; shiba; shiba; en_US; 634108168)";
    // Two Sec-CH-UA field lines, as HeaderMap::get_all yields them.
    let sec_ch_ua: [&[u8]; 2] = [
        br#""Not)A;Brand";v="99", "Android WebView";v="127""#,
        br#""Chromium";v="127""#,
    ];
    let platform: [&[u8]; 1] = [br#""Android""#];
    let first = parser.parse(Some(ua), sec_ch_ua, platform);
    assert_eq!(first.browser, Browser::Instagram);
    let mut again = None;
    let n = allocations(|| again = Some(parser.parse(Some(ua), sec_ch_ua, platform)));
    assert_eq!(again, Some(first));
    assert_eq!(n, 0, "heap allocations for a cached user agent with hints");
}
