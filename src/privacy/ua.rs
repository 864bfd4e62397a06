//! User agent classification: the User-Agent header, refined by the `Sec-CH-UA` and
//! `Sec-CH-UA-Platform` Client Hints, reduced to a browser family, its major version, an OS
//! family and a bot flag (SPEC §4).
//!
//! It owns the compiled uap-core rules (vendored in `uap-core/`) and a bounded cache of results.
//! It must never keep, log or return any part of the raw header values: the cache is keyed by a
//! keyed 64-bit hash of the user agent, and everything returned comes from fixed sets.

use std::hash::{BuildHasher, Hasher, RandomState};

use quick_cache::sync::Cache;

/// The uap-core rules, compiled into the binary so the parser needs no file at run time.
const REGEXES_YAML: &str = include_str!("uap-core/regexes.yaml");

/// Only this many leading bytes of a User-Agent are matched, so a huge header cannot be slow.
pub const MAX_UA_BYTES: usize = 512;

/// A browser family as recorded in the access log and the `browser` metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Browser {
    Chrome,
    Firefox,
    Safari,
    Edge,
    Opera,
    SamsungInternet,
    YandexBrowser,
    UcBrowser,
    InternetExplorer,
    Facebook,
    Instagram,
    Other,
}

impl Browser {
    /// Every family, in a fixed order (for pre-resolving metric handles).
    pub const ALL: &'static [Browser] = &[
        Browser::Chrome,
        Browser::Firefox,
        Browser::Safari,
        Browser::Edge,
        Browser::Opera,
        Browser::SamsungInternet,
        Browser::YandexBrowser,
        Browser::UcBrowser,
        Browser::InternetExplorer,
        Browser::Facebook,
        Browser::Instagram,
        Browser::Other,
    ];

    /// The recorded name, e.g. `"Samsung Internet"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Browser::Chrome => "Chrome",
            Browser::Firefox => "Firefox",
            Browser::Safari => "Safari",
            Browser::Edge => "Edge",
            Browser::Opera => "Opera",
            Browser::SamsungInternet => "Samsung Internet",
            Browser::YandexBrowser => "Yandex Browser",
            Browser::UcBrowser => "UC Browser",
            Browser::InternetExplorer => "Internet Explorer",
            Browser::Facebook => "Facebook",
            Browser::Instagram => "Instagram",
            Browser::Other => "Other",
        }
    }

    /// Folds a uap-core user agent family onto the recorded families.
    fn from_uap_family(family: &str) -> Browser {
        match family {
            "Chrome"
            | "Chrome Mobile"
            | "Chrome Mobile iOS"
            | "Chrome Mobile WebView"
            | "Chromium" => Browser::Chrome,
            "Firefox" | "Firefox Mobile" | "Firefox iOS" | "Firefox Beta" | "Firefox Alpha" => {
                Browser::Firefox
            }
            // "Firefox ($1)": Nightly, Developer Edition and the like.
            f if f.starts_with("Firefox (") => Browser::Firefox,
            "Safari" | "Mobile Safari" | "Mobile Safari UI/WKWebView" => Browser::Safari,
            "Edge" | "Edge Mobile" => Browser::Edge,
            "Opera" | "Opera Mobile" | "Opera Mini" | "Opera Tablet" | "Opera Coast"
            | "Opera Neon" | "Opera Touch" | "Opera GX" => Browser::Opera,
            "Samsung Internet" => Browser::SamsungInternet,
            "Yandex Browser" => Browser::YandexBrowser,
            "UC Browser" => Browser::UcBrowser,
            "IE" | "IE Mobile" | "IE Large Screen" => Browser::InternetExplorer,
            "Facebook" | "Facebook Messenger" => Browser::Facebook,
            "Instagram" => Browser::Instagram,
            _ => Browser::Other,
        }
    }
}

/// An operating system family as recorded in the access log and the `os` metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Os {
    Windows,
    MacOs,
    Ios,
    Android,
    Linux,
    ChromeOs,
    Other,
}

impl Os {
    /// Every family, in a fixed order (for pre-resolving metric handles).
    pub const ALL: &'static [Os] = &[
        Os::Windows,
        Os::MacOs,
        Os::Ios,
        Os::Android,
        Os::Linux,
        Os::ChromeOs,
        Os::Other,
    ];

    /// The recorded name, e.g. `"macOS"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Os::Windows => "Windows",
            Os::MacOs => "macOS",
            Os::Ios => "iOS",
            Os::Android => "Android",
            Os::Linux => "Linux",
            Os::ChromeOs => "ChromeOS",
            Os::Other => "Other",
        }
    }

    /// Folds a uap-core OS family onto the recorded families.
    fn from_uap_family(family: &str) -> Os {
        match family {
            // Phone and embedded Windows are different systems, not versions of Windows.
            "Windows Phone" | "Windows Mobile" | "Windows CE" => Os::Other,
            f if f.starts_with("Windows") => Os::Windows,
            "Mac OS X" | "macOS" | "Mac OS" => Os::MacOs,
            "iOS" | "iPadOS" => Os::Ios,
            "Android" => Os::Android,
            "Chrome OS" => Os::ChromeOs,
            "Linux" | "Ubuntu" | "Kubuntu" | "Lubuntu" | "Debian" | "Fedora" | "Red Hat"
            | "Linux Mint" | "Mandriva" | "Arch Linux" | "CentOS" | "Slackware" | "Gentoo"
            | "openSUSE" | "SUSE" | "PCLinuxOS" | "Mageia" | "Puppy" => Os::Linux,
            _ => Os::Other,
        }
    }

    /// Maps a `Sec-CH-UA-Platform` value (without quotes); `None` when it names no known family.
    fn from_platform_hint(platform: &[u8]) -> Option<Os> {
        const TABLE: &[(&[u8], Os)] = &[
            (b"Windows", Os::Windows),
            (b"macOS", Os::MacOs),
            (b"iOS", Os::Ios),
            (b"Android", Os::Android),
            (b"Linux", Os::Linux),
            (b"Chrome OS", Os::ChromeOs),
            (b"Chromium OS", Os::ChromeOs),
        ];
        TABLE
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(platform))
            .map(|&(_, os)| os)
    }
}

/// What is recorded about the client software of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Device {
    pub browser: Browser,
    /// Major version of `browser`; always `None` for [`Browser::Other`].
    pub browser_major: Option<u16>,
    pub os: Os,
    /// The user agent is a known crawler, bot or scripted HTTP client.
    pub bot: bool,
}

impl Device {
    /// The result for a missing, empty or unrecognised user agent.
    pub const UNKNOWN: Device = Device {
        browser: Browser::Other,
        browser_major: None,
        os: Os::Other,
        bot: false,
    };
}

/// The built-in rules could not be loaded; a build defect, never caused by a request.
#[derive(Debug, thiserror::Error)]
pub enum UaError {
    #[error("the built-in uap-core regexes.yaml is not valid: {0}")]
    Data(#[from] serde_yaml::Error),
    #[error("the built-in uap-core rules could not be compiled: {0}")]
    Compile(#[from] ua_parser::Error),
}

/// Classifies user agents; build one at start and share it (`Send + Sync`) with all tasks.
pub struct UaParser {
    rules: ua_parser::Extractor<'static>,
    /// `None` when built with a capacity of 0.
    cache: Option<Cache<u64, Device>>,
    /// Per-process key, so nobody can aim a colliding user agent at a cached entry.
    hash_key: RandomState,
}

impl UaParser {
    /// Compiles the vendored uap-core rules (about 0.2 s in a release build: do it once at start)
    /// and sets up a cache of `cache_capacity` distinct user agents (0 disables the cache).
    ///
    /// ```
    /// use webprom_edge::privacy::ua::{Browser, UaParser};
    /// let parser = UaParser::new(1024)?;
    /// let d = parser.parse(Some(b"curl/8.5.0"), None, None);
    /// assert!(d.bot);
    /// assert_eq!(d.browser, Browser::Other);
    /// # Ok::<(), webprom_edge::privacy::ua::UaError>(())
    /// ```
    pub fn new(cache_capacity: usize) -> Result<UaParser, UaError> {
        let regexes: ua_parser::Regexes<'static> = serde_yaml::from_str(REGEXES_YAML)?;
        let rules = ua_parser::Extractor::try_from(regexes)?;
        let cache = (cache_capacity > 0).then(|| Cache::new(cache_capacity));
        Ok(UaParser {
            rules,
            cache,
            hash_key: RandomState::new(),
        })
    }

    /// Classifies one request from its User-Agent, Sec-CH-UA and Sec-CH-UA-Platform header
    /// values, as raw bytes (absent, empty, non-UTF-8 or huge values give [`Device::UNKNOWN`]
    /// parts; never panics).
    pub fn parse(
        &self,
        user_agent: Option<&[u8]>,
        sec_ch_ua: Option<&[u8]>,
        sec_ch_ua_platform: Option<&[u8]>,
    ) -> Device {
        let from_ua = match user_agent {
            Some(ua) if !ua.is_empty() => self.parse_user_agent_cached(ua),
            _ => Device::UNKNOWN,
        };
        refine_with_hints(from_ua, sec_ch_ua, sec_ch_ua_platform)
    }

    /// The User-Agent part, cached. Hints are applied after the cache (they are cheap), so one
    /// entry serves every hint combination sent with the same user agent.
    fn parse_user_agent_cached(&self, user_agent: &[u8]) -> Device {
        let ua = &user_agent[..user_agent.len().min(MAX_UA_BYTES)];
        let Some(cache) = &self.cache else {
            return self.parse_user_agent(ua);
        };
        let mut hasher = self.hash_key.build_hasher();
        hasher.write(ua);
        let key = hasher.finish();
        if let Some(device) = cache.get(&key) {
            return device;
        }
        let device = self.parse_user_agent(ua);
        cache.insert(key, device);
        device
    }

    /// The User-Agent part, uncached. `ua` is already capped to [`MAX_UA_BYTES`].
    fn parse_user_agent(&self, ua: &[u8]) -> Device {
        // A cap can split a character and garbage may not be UTF-8 at all: match the valid prefix.
        let ua = match std::str::from_utf8(ua) {
            Ok(s) => s,
            Err(e) => std::str::from_utf8(&ua[..e.valid_up_to()]).unwrap_or_default(),
        };
        if ua.trim().is_empty() {
            return Device::UNKNOWN;
        }
        let (browser, browser_major, ua_family_is_bot) = match self.rules.ua.extract(ua) {
            Some(v) => {
                let browser = Browser::from_uap_family(&v.family);
                let major = if browser == Browser::Other {
                    None
                } else {
                    v.major.and_then(|m| m.parse::<u16>().ok())
                };
                (browser, major, is_bot_family(&v.family))
            }
            None => (Browser::Other, None, false),
        };
        let os = self
            .rules
            .os
            .extract(ua)
            .map_or(Os::Other, |v| Os::from_uap_family(&v.os));
        let bot = ua_family_is_bot
            || self
                .rules
                .dev
                .extract(ua)
                .is_some_and(|d| d.device == "Spider");
        Device {
            browser,
            browser_major,
            os,
            bot,
        }
    }
}

/// uap-core user agent families that are crawlers or scripted clients rather than people.
/// Crawlers mostly surface through the device family "Spider"; this catches the rest.
fn is_bot_family(family: &str) -> bool {
    const SCRIPTED: &[&str] = &[
        "Spider",
        "curl",
        "Wget",
        "Python Requests",
        "Python-urllib",
        "Go-http-client",
        "okhttp",
        "Apache-HttpClient",
        "HTTPClient",
        "Java",
        "HeadlessChrome",
        "PhantomJS",
        "PostmanRuntime",
        "axios",
        "node-fetch",
        "aiohttp",
        "libwww-perl",
    ];
    const MARKERS: &[&[u8]] = &[b"bot", b"spider", b"crawler"];
    SCRIPTED.iter().any(|s| s.eq_ignore_ascii_case(family))
        || MARKERS
            .iter()
            .any(|m| contains_ignore_ascii_case(family.as_bytes(), m))
}

fn contains_ignore_ascii_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// Applies Client Hints on top of what the User-Agent said. A hint that cannot be parsed or
/// names nothing known leaves the User-Agent's answer in place.
fn refine_with_hints(
    mut device: Device,
    sec_ch_ua: Option<&[u8]>,
    platform: Option<&[u8]>,
) -> Device {
    if let Some((browser, major)) = sec_ch_ua.and_then(brand_from_sec_ch_ua) {
        device.browser = browser;
        device.browser_major = major;
    }
    if let Some(os) = platform
        .and_then(parse_sf_string)
        .and_then(Os::from_platform_hint)
    {
        device.os = os;
    }
    device
}

/// How specific a `Sec-CH-UA` brand is: a named product beats the engine name "Chromium".
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum BrandRank {
    Engine,
    Product,
}

/// Picks the most specific known brand of a `Sec-CH-UA` list and its major version.
/// Unknown brands (Brave, Vivaldi, …) and GREASE brands are skipped, so a Chromium-based
/// browser we do not name is recorded as Chrome, as its User-Agent would be.
fn brand_from_sec_ch_ua(header: &[u8]) -> Option<(Browser, Option<u16>)> {
    let mut best: Option<(BrandRank, Browser, Option<u16>)> = None;
    for item in SfList::new(header) {
        // A malformed list is ignored as a whole, as RFC 8941 parsers do.
        let (brand, version) = item?;
        let Some((rank, browser)) = known_brand(brand) else {
            continue;
        };
        if best.is_none_or(|(best_rank, _, _)| rank > best_rank) {
            best = Some((rank, browser, version.and_then(parse_major)));
        }
    }
    best.map(|(_, browser, major)| (browser, major))
}

fn known_brand(brand: &[u8]) -> Option<(BrandRank, Browser)> {
    use BrandRank::{Engine, Product};
    let product = |b| Some((Product, b));
    match brand {
        b"Google Chrome" | b"Android WebView" => product(Browser::Chrome),
        b"Chromium" => Some((Engine, Browser::Chrome)),
        b"Opera" | b"Opera GX" => product(Browser::Opera),
        b"Samsung Internet" => product(Browser::SamsungInternet),
        b"Yandex" | b"YaBrowser" => product(Browser::YandexBrowser),
        // "Microsoft Edge", and "Microsoft Edge WebView2" in embedded views.
        b if b.starts_with(b"Microsoft Edge") => product(Browser::Edge),
        _ => None,
    }
}

/// The leading digits of a version such as `131` or `131.0.6778.86`.
fn parse_major(version: &[u8]) -> Option<u16> {
    let digits = version.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&version[..digits]).ok()?.parse().ok()
}

/// Iterates over a Structured Field list of strings with parameters (RFC 8941 §3.1), as sent
/// in `Sec-CH-UA`: `"Chromium";v="131", "Not_A Brand";v="24"`. Yields each string's raw bytes
/// (escapes left as they are; no known brand has any) with its `v` parameter, or `None` once
/// on malformed input. GREASE brands are left out.
struct SfList<'a> {
    rest: &'a [u8],
    failed: bool,
}

type SfItem<'a> = Option<(&'a [u8], Option<&'a [u8]>)>;

impl<'a> SfList<'a> {
    fn new(header: &'a [u8]) -> Self {
        SfList {
            rest: trim_sp(header),
            failed: false,
        }
    }

    fn next_item(&mut self) -> SfItem<'a> {
        let (brand, mut rest) = split_sf_string(self.rest)?;
        let mut version = None;
        loop {
            rest = trim_leading_sp(rest);
            match rest.split_first() {
                Some((b';', tail)) => {
                    let tail = trim_leading_sp(tail);
                    let key_len = tail
                        .iter()
                        .take_while(|b| {
                            b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.*".contains(b)
                        })
                        .count();
                    if key_len == 0 {
                        return None;
                    }
                    let (key, tail) = tail.split_at(key_len);
                    let (value, tail) = match tail.split_first() {
                        Some((b'=', value)) => split_sf_bare_item(value)?,
                        _ => (&b""[..], tail),
                    };
                    if key == b"v" {
                        version = Some(value);
                    }
                    rest = tail;
                }
                Some((b',', tail)) => {
                    self.rest = trim_leading_sp(tail);
                    if self.rest.is_empty() {
                        return None; // a trailing comma is malformed
                    }
                    return Some((brand, version));
                }
                None => {
                    self.rest = rest;
                    return Some((brand, version));
                }
                Some(_) => return None,
            }
        }
    }
}

impl<'a> Iterator for SfList<'a> {
    type Item = SfItem<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.failed || self.rest.is_empty() {
                return None;
            }
            match self.next_item() {
                Some((brand, _)) if is_grease(brand) => continue,
                Some(item) => return Some(Some(item)),
                None => {
                    self.failed = true;
                    return Some(None);
                }
            }
        }
    }
}

/// Chromium's GREASE brands are "Not" "A" "Brand" with varying punctuation
/// (`Not_A Brand`, `Not/A)Brand`, `Not A(Brand`, …): compare the letters only.
fn is_grease(brand: &[u8]) -> bool {
    let mut letters = brand.iter().filter(|b| b.is_ascii_alphabetic());
    let expected = b"notabrand";
    expected
        .iter()
        .all(|e| letters.next().is_some_and(|l| l.eq_ignore_ascii_case(e)))
        && letters.next().is_none()
}

/// Splits a leading sf-string (`"..."`) off `input`: its content without quotes and the rest.
fn split_sf_string(input: &[u8]) -> Option<(&[u8], &[u8])> {
    let body = input.strip_prefix(b"\"")?;
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'\\' => i += 2,
            b'"' => return Some((&body[..i], &body[i + 1..])),
            b if b.is_ascii_graphic() || b == b' ' => i += 1,
            _ => return None,
        }
    }
    None
}

/// Splits a parameter value off `input`: an sf-string's content or a bare token/number.
fn split_sf_bare_item(input: &[u8]) -> Option<(&[u8], &[u8])> {
    if input.first() == Some(&b'"') {
        return split_sf_string(input);
    }
    let len = input
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(b))
        .count();
    (len > 0).then(|| input.split_at(len))
}

/// A whole header that is one sf-string, such as `Sec-CH-UA-Platform: "macOS"`.
fn parse_sf_string(header: &[u8]) -> Option<&[u8]> {
    let (value, rest) = split_sf_string(trim_sp(header))?;
    rest.is_empty().then_some(value)
}

fn trim_leading_sp(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|b| matches!(b, b' ' | b'\t')).count();
    &s[n..]
}

fn trim_sp(s: &[u8]) -> &[u8] {
    let s = trim_leading_sp(s);
    let n = s
        .iter()
        .rev()
        .take_while(|b| matches!(b, b' ' | b'\t'))
        .count();
    &s[..s.len() - n]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::OnceLock;

    /// Compiling the rules is the slow part: share one parser (and one uncached) across tests.
    fn parser() -> &'static UaParser {
        static P: OnceLock<UaParser> = OnceLock::new();
        P.get_or_init(|| UaParser::new(256).expect("built-in rules compile"))
    }

    fn uncached() -> &'static UaParser {
        static P: OnceLock<UaParser> = OnceLock::new();
        P.get_or_init(|| UaParser::new(0).expect("built-in rules compile"))
    }

    #[test]
    fn parser_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<UaParser>();
    }

    #[test]
    fn names_are_the_spec_families() {
        let names: Vec<_> = Browser::ALL.iter().map(|b| b.as_str()).collect();
        assert_eq!(
            names,
            [
                "Chrome",
                "Firefox",
                "Safari",
                "Edge",
                "Opera",
                "Samsung Internet",
                "Yandex Browser",
                "UC Browser",
                "Internet Explorer",
                "Facebook",
                "Instagram",
                "Other"
            ]
        );
        let names: Vec<_> = Os::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(
            names,
            [
                "Windows", "macOS", "iOS", "Android", "Linux", "ChromeOS", "Other"
            ]
        );
    }

    use Browser as B;
    use Os as O;

    /// Real user agents: (UA, browser, major, os, bot).
    #[rustfmt::skip]
    const REAL: &[(&str, Browser, Option<u16>, Os, bool)] = &[
        // Desktop Chrome
        ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36", B::Chrome, Some(131), O::Windows, false),
        ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36", B::Chrome, Some(130), O::MacOs, false),
        ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/129.0.0.0 Safari/537.36", B::Chrome, Some(129), O::Linux, false),
        ("Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/128.0.0.0 Safari/537.36", B::Chrome, Some(128), O::ChromeOs, false),
        // Mobile Chrome, Chrome on iOS, Android WebView
        ("Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36", B::Chrome, Some(131), O::Android, false),
        ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/131.0.6778.73 Mobile/15E148 Safari/604.1", B::Chrome, Some(131), O::Ios, false),
        ("Mozilla/5.0 (Linux; Android 13; SM-G991B Build/TP1A.220624.014; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/120.0.6099.144 Mobile Safari/537.36", B::Chrome, Some(120), O::Android, false),
        // Firefox
        ("Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0", B::Firefox, Some(133), O::Windows, false),
        ("Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0", B::Firefox, Some(128), O::Linux, false),
        ("Mozilla/5.0 (Macintosh; Intel Mac OS X 14.7; rv:132.0) Gecko/20100101 Firefox/132.0", B::Firefox, Some(132), O::MacOs, false),
        ("Mozilla/5.0 (Android 14; Mobile; rv:133.0) Gecko/133.0 Firefox/133.0", B::Firefox, Some(133), O::Android, false),
        ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_7 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) FxiOS/132.0 Mobile/15E148 Safari/605.1.15", B::Firefox, Some(132), O::Ios, false),
        // Safari
        ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15", B::Safari, Some(18), O::MacOs, false),
        ("Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1", B::Safari, Some(18), O::Ios, false),
        ("Mozilla/5.0 (iPad; CPU OS 17_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.6 Mobile/15E148 Safari/604.1", B::Safari, Some(17), O::Ios, false),
        // Edge
        ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0", B::Edge, Some(131), O::Windows, false),
        ("Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36 EdgA/131.0.0.0", B::Edge, Some(131), O::Android, false),
        // Opera
        ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36 OPR/115.0.0.0", B::Opera, Some(115), O::Windows, false),
        ("Mozilla/5.0 (Linux; Android 10; VOG-L29) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Mobile Safari/537.36 OPR/85.0.0.0", B::Opera, Some(85), O::Android, false),
        // Samsung Internet, Yandex, UC
        ("Mozilla/5.0 (Linux; Android 14; SAMSUNG SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/26.0 Chrome/122.0.0.0 Mobile Safari/537.36", B::SamsungInternet, Some(26), O::Android, false),
        ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 YaBrowser/24.7.0.0 Safari/537.36", B::YandexBrowser, Some(24), O::Windows, false),
        ("Mozilla/5.0 (Linux; U; Android 10; en-US; RMX2020 Build/QP1A.190711.020) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/78.0.3904.108 UCBrowser/13.4.0.1306 Mobile Safari/537.36", B::UcBrowser, Some(13), O::Android, false),
        // Internet Explorer 11
        ("Mozilla/5.0 (Windows NT 10.0; WOW64; Trident/7.0; rv:11.0) like Gecko", B::InternetExplorer, Some(11), O::Windows, false),
        // In-app browsers
        ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 [FBAN/FBIOS;FBAV/480.0.0.38.109;FBBV/647427361;FBDV/iPhone14,5;FBMD/iPhone;FBSN/iOS;FBSV/17.5;FBSS/3;FBID/phone;FBLC/en_US;FBOP/5;FBRV/649398478]", B::Facebook, Some(480), O::Ios, false),
        ("Mozilla/5.0 (Linux; Android 14; Pixel 8 Build/AP2A.240805.005; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/127.0.6533.103 Mobile Safari/537.36 [FB_IAB/FB4A;FBAV/477.0.0.49.82;]", B::Facebook, Some(477), O::Android, false),
        ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_6_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 Instagram 350.0.4.24.85 (iPhone15,2; iOS 17_6_1; en_US; en; scale=3.00; 1179x2556; 646434637)", B::Instagram, Some(350), O::Ios, false),
        // Crawlers and scripts
        ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", B::Other, None, O::Other, true),
        ("Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.6778.204 Mobile Safari/537.36 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", B::Other, None, O::Android, true),
        ("Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)", B::Other, None, O::Other, true),
        ("Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)", B::Other, None, O::Other, true),
        ("curl/8.5.0", B::Other, None, O::Other, true),
        ("python-requests/2.32.3", B::Other, None, O::Other, true),
        ("Wget/1.21.4", B::Other, None, O::Other, true),
        ("facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)", B::Other, None, O::Other, true),
        ("Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)", B::Other, None, O::Other, true),
        ("Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)", B::Other, None, O::Other, true),
        ("okhttp/4.12.0", B::Other, None, O::Other, true),
        // Headless automation is a bot even though the engine is a browser's.
        ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/131.0.0.0 Safari/537.36", B::Other, None, O::Windows, true),
        // More desktop and mobile: Edge on Linux; a Cubot phone is not a bot despite the name.
        ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0", B::Edge, Some(131), O::Linux, false),
        ("Mozilla/5.0 (Linux; Android 12; Cubot KingKong 7 Build/SP1A.210812.016) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.230 Mobile Safari/537.36", B::Chrome, Some(120), O::Android, false),
    ];

    #[test]
    fn real_user_agents() {
        let mut failures = Vec::new();
        for &(ua, browser, major, os, bot) in REAL {
            let want = Device {
                browser,
                browser_major: major,
                os,
                bot,
            };
            let got = parser().parse(Some(ua.as_bytes()), None, None);
            if got != want {
                failures.push(format!("{ua}\n   got  {got:?}\n   want {want:?}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    const FROZEN_CHROME_WINDOWS: &[u8] = b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";

    /// (Sec-CH-UA, Sec-CH-UA-Platform, browser, major, os) with [`FROZEN_CHROME_WINDOWS`].
    type HintCase = (
        Option<&'static str>,
        Option<&'static str>,
        Browser,
        Option<u16>,
        Os,
    );

    #[rustfmt::skip]
    const HINTS: &[HintCase] = &[
        (None, None, B::Chrome, Some(131), O::Windows),
        (Some(r#""Microsoft Edge";v="131", "Chromium";v="131", "Not_A Brand";v="24""#), Some(r#""macOS""#), B::Edge, Some(131), O::MacOs),
        (Some(r#""Chromium";v="132", "Google Chrome";v="132", "Not_A Brand";v="8""#), None, B::Chrome, Some(132), O::Windows),
        // Chromium alone means Chrome; a brand we do not know does not change that.
        (Some(r#""Chromium";v="130", "Not/A)Brand";v="99""#), None, B::Chrome, Some(130), O::Windows),
        (Some(r#""Brave";v="131", "Chromium";v="131", "Not_A Brand";v="24""#), None, B::Chrome, Some(131), O::Windows),
        (Some(r#""Not A(Brand";v="99", "Opera";v="115", "Chromium";v="130""#), Some(r#""Linux""#), B::Opera, Some(115), O::Linux),
        (Some(r#""Samsung Internet";v="26.0", "Chromium";v="122", "Not(A:Brand";v="24""#), Some(r#""Android""#), B::SamsungInternet, Some(26), O::Android),
        (Some(r#""Chromium";v="126", "Not.A/Brand";v="24", "YaBrowser";v="24.7""#), None, B::YandexBrowser, Some(24), O::Windows),
        (Some(r#""Microsoft Edge WebView2";v="131", "Chromium";v="131""#), None, B::Edge, Some(131), O::Windows),
        // Platforms
        (None, Some(r#""Chrome OS""#), B::Chrome, Some(131), O::ChromeOs),
        (None, Some(r#""Chromium OS""#), B::Chrome, Some(131), O::ChromeOs),
        (None, Some(r#""iOS""#), B::Chrome, Some(131), O::Ios),
        (None, Some(r#" "Windows" "#), B::Chrome, Some(131), O::Windows),
        // Only GREASE, unknown platform, malformed: the User-Agent stands.
        (Some(r#""Not_A Brand";v="24""#), Some(r#""Unknown""#), B::Chrome, Some(131), O::Windows),
        (Some(r#""Microsoft Edge";v="131", garbage"#), Some("macOS"), B::Chrome, Some(131), O::Windows),
        (Some(r#""Microsoft Edge";v="131","#), Some(r#""macOS"x"#), B::Chrome, Some(131), O::Windows),
        (Some(r#""Microsoft Edge"#), Some(r#"""#), B::Chrome, Some(131), O::Windows),
        // Version missing or not a number: brand kept, version unknown.
        (Some(r#""Microsoft Edge", "Chromium";v="131""#), None, B::Edge, None, O::Windows),
        (Some(r#""Opera";v="x1";q=1"#), None, B::Opera, None, O::Windows),
        (Some(r#""Opera";v=115"#), None, B::Opera, Some(115), O::Windows),
    ];

    #[test]
    fn client_hints_refine_the_user_agent() {
        for &(ch, platform, browser, major, os) in HINTS {
            let got = parser().parse(
                Some(FROZEN_CHROME_WINDOWS),
                ch.map(str::as_bytes),
                platform.map(str::as_bytes),
            );
            let want = Device {
                browser,
                browser_major: major,
                os,
                bot: false,
            };
            assert_eq!(got, want, "Sec-CH-UA {ch:?}, platform {platform:?}");
        }
    }

    #[test]
    fn client_hints_without_user_agent() {
        let got = parser().parse(
            None,
            Some(br#""Google Chrome";v="131", "Chromium";v="131""#),
            Some(br#""Android""#),
        );
        assert_eq!(
            got,
            Device {
                browser: B::Chrome,
                browser_major: Some(131),
                os: O::Android,
                bot: false
            }
        );
    }

    #[test]
    fn grease_brands() {
        for grease in [
            "Not_A Brand",
            "Not/A)Brand",
            "Not A(Brand",
            "Not)A;Brand",
            "Not.A/Brand",
            "Not?A_Brand",
            "Not:A-Brand",
            "Not;A=Brand",
        ] {
            assert!(is_grease(grease.as_bytes()), "{grease}");
        }
        for brand in ["Google Chrome", "Chromium", "NotABrandX", "Not", ""] {
            assert!(!is_grease(brand.as_bytes()), "{brand}");
        }
    }

    #[test]
    fn garbage_never_panics_and_is_other() {
        let huge_garbage = vec![b'A'; 100_000];
        let huge_chrome = {
            let mut v = FROZEN_CHROME_WINDOWS.to_vec();
            v.extend(std::iter::repeat_n(b' ', 1_000_000));
            v
        };
        let invalid: &[&[u8]] = &[
            b"",
            b"   ",
            b"\xff\xfe\xfd",
            b"\x00\x01\x02",
            b"\xc3",
            b"Mozilla/5.0 \xe2\x82",
            "日本語のユーザーエージェント".as_bytes(),
            &huge_garbage,
        ];
        for &ua in invalid {
            for p in [parser(), uncached()] {
                let got = p.parse(Some(ua), Some(ua), Some(ua));
                assert_eq!(
                    got,
                    Device::UNKNOWN,
                    "{:?}",
                    String::from_utf8_lossy(&ua[..ua.len().min(40)])
                );
            }
        }
        assert_eq!(parser().parse(None, None, None), Device::UNKNOWN);
        // A huge header is cut, not rejected: the head still classifies.
        let got = parser().parse(Some(&huge_chrome), None, None);
        assert_eq!((got.browser, got.os), (B::Chrome, O::Windows));
        // Non-UTF-8 after a valid head: the head still classifies.
        let mut tail = FROZEN_CHROME_WINDOWS.to_vec();
        tail.extend_from_slice(b" \xff\xfe");
        assert_eq!(parser().parse(Some(&tail), None, None).browser, B::Chrome);
    }

    #[test]
    fn cache_matches_uncached_parse() {
        let cached = UaParser::new(4).expect("rules compile");
        for _round in 0..3 {
            // More user agents than capacity, so entries are evicted and re-parsed too.
            for &(ua, ..) in REAL {
                let ua = ua.as_bytes();
                assert_eq!(
                    cached.parse(Some(ua), None, None),
                    uncached().parse(Some(ua), None, None)
                );
                let ch = Some(&br#""Microsoft Edge";v="131""#[..]);
                assert_eq!(
                    cached.parse(Some(ua), ch, None),
                    uncached().parse(Some(ua), ch, None)
                );
            }
        }
    }
}
