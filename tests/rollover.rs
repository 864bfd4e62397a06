//! The UTC-midnight key rollover, driven through the same function the running proxy's midnight
//! timer calls (`privacy::keys::schedule::rollover`), with the day given explicitly.

use webprom_edge::client_ip::ClientAddr;
use webprom_edge::config::Config;
use webprom_edge::epoch::Epoch;
use webprom_edge::metrics::Metrics;
use webprom_edge::privacy::capture::{Capture, ClientMemo, EpochKey};
use webprom_edge::privacy::keys::schedule::rollover;
use webprom_edge::privacy::keys::{KeyStore, next_key, pseudonym};

#[test]
fn rollover_ratchets_the_running_capture_to_the_new_day() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.privacy.key_dir = dir.path().join("keys");
    config.access_log.dir = dir.path().join("logs");
    config.geoip.database = "".into();

    let today = Epoch::today();
    let yesterday = today.prev();
    let keys = KeyStore::open(&config.privacy.key_dir, config.privacy.key_retention.0).unwrap();
    let old = keys.ratchet_to(yesterday).unwrap();
    let old_key = old.key.clone();
    let capture = Capture::new(
        &config,
        EpochKey {
            epoch: yesterday,
            key: old.key,
        },
        None,
    )
    .unwrap();
    let metrics = Metrics::new(&[]);

    let client: std::net::IpAddr = "198.51.100.7".parse().unwrap();
    let req = http::Request::get("/").body(()).unwrap();
    // One connection across midnight: its memo of the client's facts must not outlive the key.
    let memo = ClientMemo::default();
    let before = capture
        .begin(ClientAddr::new(client), &req, None, &memo)
        .finish(200, 0, false);
    assert_eq!(before.epoch(), yesterday);
    assert_eq!(
        before.client(),
        pseudonym(&old_key, ClientAddr::new(client), 64)
    );
    metrics.observe(&before);
    assert!(
        metrics
            .render()
            .contains("webprom_edge_unique_clients{window=\"epoch\"} 1")
    );

    // Midnight: the epoch, the key file and the pseudonyms move on; the distinct-visitor
    // window starts again.
    assert!(rollover(&keys, &capture, &metrics, today).unwrap());
    let after = capture
        .begin(ClientAddr::new(client), &req, None, &memo)
        .finish(200, 0, false);
    assert_eq!(after.epoch(), today);
    assert_eq!(
        after.client(),
        pseudonym(&next_key(&old_key), ClientAddr::new(client), 64)
    );
    assert_ne!(after.client(), before.client());
    assert!(dir.path().join(format!("keys/{today}.key")).exists());
    assert!(
        metrics
            .render()
            .contains("webprom_edge_unique_clients{window=\"epoch\"} 0")
    );

    // A second call on the same day changes nothing.
    assert!(!rollover(&keys, &capture, &metrics, today).unwrap());
}
