//! `investigate --ip` over about 1 GB of day files, timed end to end with the release binary.
//!
//! Generates eight day files of realistic records (10 000 clients a day, one record in 5 000 of
//! the searched client) into `$WEBPROM_EDGE_BENCH_DIR` (default: `target/investigate-bench`),
//! reusing them on the next run, then runs `webprom-edge investigate --ip` twice with the page
//! cache warm and once after asking the kernel to drop the files from it (`dd iflag=nocache`),
//! and prints MB/s. `WEBPROM_EDGE_BENCH_MB` changes the size. Run with
//! `cargo bench --bench investigate`.

use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use webprom_edge::client_ip::ClientAddr;
use webprom_edge::epoch::Epoch;
use webprom_edge::privacy::keys::{Key, next_key, pseudonym};

const DAYS: i64 = 8;
const CLIENTS: usize = 10_000;
const TARGET: &str = "198.51.100.7";
const TARGET_EVERY: u64 = 5_000;

const PATHS: [&str; 8] = [
    "/",
    "/click/:id",
    "/video/:id/play",
    "/native/feed",
    "/push/subscribe",
    "/banner/:id",
    "/pop",
    "/static/app.js",
];
const UAS: [(&str, &str, &str); 4] = [
    ("Chrome", "\"131\"", "Windows"),
    ("Safari", "\"18\"", "iOS"),
    ("Firefox", "\"133\"", "Linux"),
    ("Samsung Internet", "\"27\"", "Android"),
];

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing we need: only run
    // the (long) measurement under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let mb: u64 = std::env::var("WEBPROM_EDGE_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let dir = std::env::var_os("WEBPROM_EDGE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/investigate-bench"));
    let expected = generate(&dir, mb << 20);
    let files: Vec<PathBuf> = fs::read_dir(dir.join("logs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("access-")
        })
        .collect();
    let bytes: u64 = files.iter().map(|p| fs::metadata(p).unwrap().len()).sum();
    println!(
        "investigate bench: {} day files, {:.1} MB, {expected} records of the client",
        files.len(),
        bytes as f64 / 1e6
    );
    for label in ["warm page cache", "warm page cache", "dropped page cache"] {
        if label.starts_with("dropped") {
            for f in &files {
                // Asks the kernel to drop the file's clean pages; no root needed.
                let _ = Command::new("dd")
                    .arg(format!("if={}", f.display()))
                    .args(["iflag=nocache", "count=0", "status=none"])
                    .status();
            }
        }
        let start = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_webprom-edge"))
            .args(["investigate", "--config"])
            .arg(dir.join("config.toml"))
            .args(["--ip", TARGET])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let secs = start.elapsed().as_secs_f64();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let found = out.stdout.iter().filter(|&&b| b == b'\n').count() as u64;
        assert_eq!(found, expected, "{}", String::from_utf8_lossy(&out.stderr));
        println!(
            "  {label:>18}: {secs:.3} s, {:.0} MB/s ({found} records found)",
            bytes as f64 / 1e6 / secs
        );
    }
}

/// Writes the config, a key and the day files (unless already there); returns how many
/// records belong to the searched client.
fn generate(dir: &Path, total: u64) -> u64 {
    let today = Epoch::today();
    let first = today.add_days(-DAYS);
    let marker = dir.join(format!("generated-{first}-{total}"));
    let logs = dir.join("logs");
    let keys = dir.join("keys");
    let per_day = total / DAYS as u64;
    let mut key_raw = [0u8; 32];
    for (i, b) in key_raw.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(13).wrapping_add(5);
    }
    if marker.exists() {
        let mut n = String::new();
        File::open(&marker).unwrap().read_to_string(&mut n).unwrap();
        return n.trim().parse().unwrap();
    }
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(&logs).unwrap();
    fs::create_dir_all(&keys).unwrap();
    let hex: String = key_raw.iter().map(|b| format!("{b:02x}")).collect();
    fs::write(keys.join(format!("{first}.key")), hex).unwrap();
    for (p, mode) in [
        (keys.clone(), 0o700),
        (keys.join(format!("{first}.key")), 0o600),
    ] {
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    }
    fs::write(
        dir.join("config.toml"),
        format!(
            "[upstream]\nservers = [\"http://127.0.0.1:9\"]\n[privacy]\nkey_dir = \"{}\"\n[access_log]\ndir = \"{}\"\n",
            keys.display(),
            logs.display()
        ),
    )
    .unwrap();
    let mut key = Key::from_bytes(key_raw);
    let mut expected = 0;
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for d in 0..DAYS {
        let day = first.add_days(d);
        let clients: Vec<String> = (0..CLIENTS)
            .map(|i| {
                let ip = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
                pseudonym(&key, ClientAddr::new(ip.parse().unwrap()), 64).to_string()
            })
            .collect();
        let target = pseudonym(&key, ClientAddr::new(TARGET.parse().unwrap()), 64).to_string();
        let path = logs.join(format!("access-{day}.jsonl"));
        let mut out = BufWriter::with_capacity(1 << 20, File::create(&path).unwrap());
        let (mut written, mut n) = (0u64, 0u64);
        while written < per_day {
            let r = next();
            let sod = n * 86_400 / (per_day / 300);
            let client = if n % TARGET_EVERY == TARGET_EVERY / 2 {
                expected += 1;
                &target
            } else {
                &clients[(r % CLIENTS as u64) as usize]
            };
            let (browser, version, os) = UAS[(r >> 20) as usize % UAS.len()];
            let status = [200, 200, 200, 204, 302, 404, 429][(r >> 24) as usize % 7];
            let line = format!(
                "{{\"ts\":\"{day}T{:02}:{:02}:{:02}Z\",\"epoch\":\"{day}\",\"client\":\"{client}\",\"net\":\"10.{}.{}.0/24\",\"country\":\"AL\",\"browser\":\"{browser}\",\"browser_version\":{version},\"os\":\"{os}\",\"bot\":false,\"lang\":\"sq\",\"method\":\"GET\",\"host\":\"ads.example.com\",\"path\":\"{}\",\"status\":{status},\"bytes_sent\":{},\"duration_ms\":{}.{},\"proto\":\"HTTP/2\",\"limited\":{}}}\n",
                (sod / 3600).min(23),
                sod / 60 % 60,
                sod % 60,
                (r >> 32) & 255,
                (r >> 40) & 255,
                PATHS[(r >> 28) as usize % PATHS.len()],
                (r >> 8) % 50_000,
                (r >> 12) % 300,
                (r >> 16) % 10,
                status == 429,
            );
            out.write_all(line.as_bytes()).unwrap();
            written += line.len() as u64;
            n += 1;
        }
        out.into_inner().unwrap().sync_all().unwrap();
        key = next_key(&key);
    }
    fs::write(&marker, expected.to_string()).unwrap();
    expected
}
