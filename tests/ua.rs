//! The user agent classification (issue 11): agreement with uap-core's own public test corpus
//! after mapping to the log's families, and the recorded `browser`, `browser_version`, `os` and
//! `bot` of requests that carry in-app browsers, Client Hints in several field lines and iOS
//! browsers in desktop mode through the real proxy over HTTP/1.1 and HTTP/2.

mod common;

use std::collections::HashMap;
use std::path::Path;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use serde::Deserialize;
use webprom_edge::privacy::ua::{Browser, Os, UaParser};

// ---------------------------------------------------------------------------------------------
// Agreement with uap-core's test corpus (tests/data/uap-core, release 0.18.0).

#[derive(Deserialize)]
struct Corpus {
    test_cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    user_agent_string: String,
    family: String,
    #[serde(default)]
    major: Option<serde_json::Value>,
}

fn corpus(file: &str) -> Vec<Case> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/uap-core")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    let corpus: Corpus = serde_saphyr::from_str(&text).unwrap();
    assert!(corpus.test_cases.len() > 400, "{}", path.display());
    corpus.test_cases
}

/// Agreement between uap-core's expected answers, mapped to the log's families, and ours:
/// - recall: of the cases whose expected family is a named one (not `Other`), the share we
///   record as that same family — the measure asserted;
/// - precision: of the cases we record as a named family, the share uap-core expects there;
/// - all: of all cases, the share where the two agree (`Other` included).
#[derive(Default)]
struct Agreement {
    expected_named: usize,
    got_named: usize,
    named_agree: usize,
    all: usize,
    all_agree: usize,
    disagreements: Vec<String>,
}

impl Agreement {
    fn count(
        &mut self,
        expected_named: bool,
        got_named: bool,
        agree: bool,
        describe: impl FnOnce() -> String,
    ) {
        self.all += 1;
        self.all_agree += usize::from(agree);
        self.expected_named += usize::from(expected_named);
        self.got_named += usize::from(got_named);
        self.named_agree += usize::from(agree && expected_named);
        if !agree && self.disagreements.len() < 200 {
            self.disagreements.push(describe());
        }
    }

    fn recall(&self) -> f64 {
        self.named_agree as f64 / self.expected_named as f64
    }

    /// Asserts the recall on named families is at least `floor`; prints all three
    /// (`cargo test --test ua -- --nocapture` shows them).
    fn assert_recall_at_least(&self, what: &str, floor: f64) {
        let pct = |a: usize, b: usize| 100.0 * a as f64 / b as f64;
        let report = format!(
            "{what}: recall {}/{} = {:.2}%, precision {}/{} = {:.2}%, all {}/{} = {:.2}%",
            self.named_agree,
            self.expected_named,
            pct(self.named_agree, self.expected_named),
            self.named_agree,
            self.got_named,
            pct(self.named_agree, self.got_named),
            self.all_agree,
            self.all,
            pct(self.all_agree, self.all),
        );
        println!("{report}");
        let named_misses: Vec<_> = self
            .disagreements
            .iter()
            .filter(|d| !d.contains("→ Other,"))
            .collect();
        assert!(self.recall() >= floor, "{report}\n{named_misses:#?}");
    }
}

fn uncached() -> UaParser {
    UaParser::new(0).unwrap()
}

/// For every case of uap-core's `test_ua.yaml`, the family it expects, mapped to the log's
/// families, is the `browser` we record from the User-Agent alone; where that is a named
/// family with a numeric major version, so is `browser_version`.
#[test]
fn browser_families_agree_with_the_uap_core_corpus() {
    let parser = uncached();
    let mut family = Agreement::default();
    let mut version = Agreement::default();
    for case in corpus("test_ua.yaml") {
        let want = Browser::from_uap_family(&case.family);
        let got = parser.parse(Some(case.user_agent_string.as_bytes()), None, None);
        let named = want != Browser::Other;
        let describe = || {
            format!(
                "{:?}\n   uap-core {:?} → {want:?}, got {:?} {:?}",
                case.user_agent_string, case.family, got.browser, got.browser_major
            )
        };
        let got_named = got.browser != Browser::Other;
        family.count(named, got_named, got.browser == want, describe);
        let want_major = case.major.as_ref().and_then(|m| match m {
            serde_json::Value::String(s) => s.parse::<u16>().ok(),
            serde_json::Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
            _ => None,
        });
        if named && got.browser == want && want_major.is_some() {
            version.count(true, true, got.browser_major == want_major, describe);
        }
    }
    family.assert_recall_at_least("browser family (test_ua.yaml)", 0.99);
    version.assert_recall_at_least("browser major version where the family agrees", 0.99);
}

/// For every case of uap-core's `test_os.yaml`, the OS family it expects, mapped to the log's
/// families, is the `os` we record.
#[test]
fn os_families_agree_with_the_uap_core_corpus() {
    let parser = uncached();
    let mut os = Agreement::default();
    for case in corpus("test_os.yaml") {
        let want = Os::from_uap_family(&case.family);
        let got = parser.parse(Some(case.user_agent_string.as_bytes()), None, None);
        os.count(
            want != Os::Other,
            got.os != Os::Other,
            got.os == want,
            || {
                format!(
                    "{:?}\n   uap-core {:?} → {want:?}, got {:?}",
                    case.user_agent_string, case.family, got.os
                )
            },
        );
    }
    os.assert_recall_at_least("OS family (test_os.yaml)", 0.99);
}

/// Every case of uap-core's `test_device.yaml` whose device is "Spider" (its crawlers) is
/// recorded as a bot. The other way round is only printed (as precision): scripted clients such
/// as curl are bots to us but not "Spider" devices to uap-core.
#[test]
fn crawlers_of_the_uap_core_corpus_are_bots() {
    let parser = uncached();
    let mut bots = Agreement::default();
    for case in corpus("test_device.yaml") {
        let got = parser.parse(Some(case.user_agent_string.as_bytes()), None, None);
        let spider = case.family == "Spider";
        bots.count(spider, got.bot, spider == got.bot, || {
            format!(
                "{:?}\n   uap-core device {:?}, bot {}",
                case.user_agent_string, case.family, got.bot
            )
        });
    }
    bots.assert_recall_at_least("crawlers recorded as bots (test_device.yaml)", 0.99);
}

// ---------------------------------------------------------------------------------------------
// End to end: what the proxy records.

const IG_ANDROID: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8 Build/AP2A.240805.005; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/127.0.6533.103 Mobile Safari/537.36 Instagram 344.0.0.34.90 Android (34/14; 420dpi; 1080x2400; Google/google; Pixel 8; shiba; shiba; en_US; 634108168)";

/// One request: path name, User-Agent, Sec-CH-UA lines, Sec-CH-UA-Platform lines, and the
/// recorded (browser, browser_version, os, bot).
struct Row {
    name: &'static str,
    user_agent: &'static str,
    sec_ch_ua: &'static [&'static str],
    platform: &'static [&'static str],
    want: (&'static str, &'static str, &'static str, &'static str),
}

const ROWS: &[Row] = &[
    Row {
        name: "instagram-web-view-hint",
        user_agent: IG_ANDROID,
        sec_ch_ua: &[r#""Not)A;Brand";v="99", "Android WebView";v="127", "Chromium";v="127""#],
        platform: &[r#""Android""#],
        want: ("Instagram", "344", "Android", "false"),
    },
    Row {
        name: "instagram-tablet",
        user_agent: "Mozilla/5.0 (Linux; Android 13; SM-X700 Build/TP1A.220624.014; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/127.0.6533.103 Safari/537.36 Instagram 344.0.0.34.90 Android (33/13; 320dpi; 1600x2560; samsung; SM-X700; gts8wifi; qcom; en_US; 634108168)",
        sec_ch_ua: &[],
        platform: &[],
        want: ("Instagram", "344", "Android", "false"),
    },
    Row {
        name: "chrome-ipad-desktop",
        user_agent: "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/118 Version/11.1.1 Safari/605.1.15",
        sec_ch_ua: &[],
        platform: &[],
        want: ("Chrome", "118", "iOS", "false"),
    },
    Row {
        name: "tiktok-web-view-hint",
        user_agent: "Mozilla/5.0 (Linux; Android 10; moto g(7) Build/QP6_S30.52-23-13-4; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/108.0.5359.128 Mobile Safari/537.36 musical_ly_2022704050 JsSdk/1.0 NetType/WIFI Channel/googleplay AppName/musical_ly app_version/27.4.5 ByteLocale/en ByteFullLocale/en Region/US BytedanceWebview/d8a21c6",
        sec_ch_ua: &[r#""Android WebView";v="108", "Chromium";v="108", "Not?A_Brand";v="8""#],
        platform: &[r#""Android""#],
        want: ("TikTok", "27", "Android", "false"),
    },
    Row {
        name: "headless-hint",
        user_agent: "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
        sec_ch_ua: &[r#""Chromium";v="131", "HeadlessChrome";v="131", "Not_A Brand";v="24""#],
        platform: &[r#""macOS""#],
        want: ("Other", "null", "macOS", "true"),
    },
    Row {
        // Two Sec-CH-UA field lines are one list; the platform hint replaces the UA's macOS.
        name: "edge-hint-in-two-lines",
        user_agent: "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
        sec_ch_ua: &[
            r#""Chromium";v="131""#,
            r#""Microsoft Edge";v="131", "Not_A Brand";v="24""#,
        ],
        platform: &[r#""Windows""#],
        want: ("Edge", "131", "Windows", "false"),
    },
];

/// Distinctive parts of the rows' header values: none may appear in the log or the output.
const CANARIES: &[&str] = &[
    "Pixel 8; shiba",
    "SM-X700",
    "634108168",
    "CriOS",
    "musical_ly",
    "BytedanceWebview",
    "Android WebView",
    "HeadlessChrome",
    "Not_A Brand",
    "Mozilla/5.0",
];

fn request(row: &Row, proto: Proto) -> Request<ReqBody> {
    let suffix = match proto {
        Proto::H1 => "h-one",
        Proto::H2 => "h-two",
    };
    let mut req = Request::get(format!("https://localhost/ua/{}/{suffix}", row.name))
        .header("user-agent", row.user_agent)
        .body(body(Bytes::new()))
        .unwrap();
    let headers = req.headers_mut();
    for line in row.sec_ch_ua {
        headers.append("sec-ch-ua", line.parse().unwrap());
    }
    for line in row.platform {
        headers.append("sec-ch-ua-platform", line.parse().unwrap());
    }
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_record_keeps_the_family_the_user_agent_names_over_both_protocols() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(&up.url()).await;
    let client = proxy.client();
    for proto in BOTH {
        for row in ROWS {
            let resp = client.request(proto, request(row, proto)).await;
            assert_eq!(resp.status, StatusCode::OK, "{}", row.name);
        }
    }
    // The last row's two Sec-CH-UA lines arrived as two lines, not joined by the client.
    assert_eq!(up.last_headers().get_all("sec-ch-ua").iter().count(), 2);

    let records = proxy.wait_records(2 * ROWS.len()).await;
    assert_eq!(records.len(), 2 * ROWS.len());
    let by_path: HashMap<String, &String> = records.iter().map(|r| (field(r, "path"), r)).collect();
    for proto in BOTH {
        let (suffix, proto_name) = match proto {
            Proto::H1 => ("h-one", "HTTP/1.1"),
            Proto::H2 => ("h-two", "HTTP/2"),
        };
        for row in ROWS {
            let path = format!("/ua/{}/{suffix}", row.name);
            let record = by_path
                .get(&path)
                .unwrap_or_else(|| panic!("no record for {path}: {records:#?}"));
            let got = (
                field(record, "browser"),
                field(record, "browser_version"),
                field(record, "os"),
                field(record, "bot"),
            );
            let (browser, version, os, bot) = row.want;
            assert_eq!(
                (
                    got.0.as_str(),
                    got.1.as_str(),
                    got.2.as_str(),
                    got.3.as_str()
                ),
                (browser, version, os, bot),
                "{path}: {record}"
            );
            assert_eq!(field(record, "proto"), proto_name, "{record}");
        }
    }

    let (status, metrics) = proxy.admin_get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    for line in [
        r#"webprom_edge_requests_by_browser_total{browser="Instagram"} 4"#,
        r#"webprom_edge_requests_by_browser_total{browser="TikTok"} 2"#,
        r#"webprom_edge_requests_by_browser_total{browser="Edge"} 2"#,
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }

    let log = proxy.access_log();
    let output = proxy.output();
    for canary in CANARIES {
        assert!(!log.contains(canary), "{canary:?} reached the access log");
        assert!(!output.contains(canary), "{canary:?} reached the output");
        assert!(!metrics.contains(canary), "{canary:?} reached the metrics");
    }
}
