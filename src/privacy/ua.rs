//! User agent classification: the User-Agent header, refined by the `Sec-CH-UA` and
//! `Sec-CH-UA-Platform` Client Hints, reduced to a browser family, its major version, an OS
//! family and a bot flag (the record's `browser`, `browser_version`, `os`, `bot`).
//!
//! The User-Agent is matched against the uap-core rules (`uap-core/regexes.yaml`, release
//! 0.18.0), after a few rules of the same format in `uap-core/local.yaml` for products and
//! crawlers 0.18.0 misses or files under the engine they embed (in-app browsers on tablets and in
//! Android web views, iOS browsers in desktop mode, newer browser tokens). The Client Hints then
//! refine that answer: a `Sec-CH-UA` brand may name the product behind a User-Agent that names
//! only a Chromium build (Chrome, an Android WebView) or nothing, and may correct the version of
//! the family the User-Agent names; it never replaces a more specific family (Instagram's web
//! view sends "Android WebView"), and a `HeadlessChrome` brand marks a bot. A
//! `Sec-CH-UA-Platform` naming a known system replaces the User-Agent's. Both hints are RFC 8941
//! Structured Fields, parsed by the `sfv` crate (a List of sf-strings, and one sf-string); a
//! value that does not parse is ignored as a whole.
//!
//! It owns the compiled rules and a bounded cache of User-Agent results. It must never keep, log
//! or return any part of the raw header values: the cache is keyed by a keyed 64-bit hash of the
//! user agent, and everything returned comes from fixed sets.

use std::convert::Infallible;
use std::hash::{BuildHasher, Hasher, RandomState};

use quick_cache::sync::Cache;
use sfv::visitor::{
    EntryVisitor, Ignored, InnerListVisitor, ItemVisitor, ListVisitor, ParameterVisitor,
    parameter_visitor_with,
};
use sfv::{BareItemFromInput, KeyRef, Parser, Version};

/// The uap-core rules, compiled into the binary so the parser needs no file at run time.
const REGEXES_YAML: &str = include_str!("uap-core/regexes.yaml");

/// Our rules in uap-core's format, checked before [`REGEXES_YAML`]'s.
const LOCAL_YAML: &str = include_str!("uap-core/local.yaml");

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
    TikTok,
    Snapchat,
    LinkedIn,
    Line,
    WeChat,
    GoogleApp,
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
        Browser::TikTok,
        Browser::Snapchat,
        Browser::LinkedIn,
        Browser::Line,
        Browser::WeChat,
        Browser::GoogleApp,
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
            Browser::TikTok => "TikTok",
            Browser::Snapchat => "Snapchat",
            Browser::LinkedIn => "LinkedIn",
            Browser::Line => "LINE",
            Browser::WeChat => "WeChat",
            Browser::GoogleApp => "Google App",
            Browser::Other => "Other",
        }
    }

    /// Folds a uap-core user agent family name (`"Chrome Mobile iOS"`, `"Firefox iOS"`, …) onto
    /// the recorded families; any family not listed here is [`Browser::Other`].
    pub fn from_uap_family(family: &str) -> Browser {
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
            "TikTok" => Browser::TikTok,
            "Snapchat" => Browser::Snapchat,
            "LinkedIn" => Browser::LinkedIn,
            "LINE" => Browser::Line,
            "WeChat Browser" => Browser::WeChat,
            // The Google Search app (GSA/…); Googlebot and the like are separate families.
            "Google" => Browser::GoogleApp,
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

    /// Folds a uap-core OS family name (`"Mac OS X"`, `"Ubuntu"`, …) onto the recorded
    /// families; any family not listed here is [`Os::Other`].
    pub fn from_uap_family(family: &str) -> Os {
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

    /// Maps a `Sec-CH-UA-Platform` value (without quotes); `None` when it names no known family
    /// (`"Unknown"`, `"Fuchsia"`, …).
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
    /// The user agent is a known crawler, bot, headless browser or scripted HTTP client.
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

/// What the User-Agent alone says: the part of a classification that is cached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FromUserAgent {
    device: Device,
    /// The User-Agent names no browser, or only a Chromium build that any Chromium-based browser
    /// may send (Chrome, Chromium, an Android WebView): a `Sec-CH-UA` brand may say which
    /// product it is. Any other family (Edge, Instagram, Firefox, a crawler, …) is more
    /// specific than a hint and stays.
    open_to_hints: bool,
}

impl FromUserAgent {
    const UNKNOWN: FromUserAgent = FromUserAgent {
        device: Device::UNKNOWN,
        open_to_hints: true,
    };
}

/// The built-in rules could not be loaded; a build defect, never caused by a request.
#[derive(Debug, thiserror::Error)]
pub enum UaError {
    #[error("the built-in uap-core rules (regexes.yaml, local.yaml) are not valid YAML: {0}")]
    Data(#[from] serde_saphyr::Error),
    #[error("the built-in uap-core rules could not be compiled: {0}")]
    Compile(#[from] ua_parser::Error),
}

/// Classifies user agents; build one at start and share it (`Send + Sync`) with all tasks.
pub struct UaParser {
    rules: ua_parser::Extractor<'static>,
    /// `None` when built with a capacity of 0.
    cache: Option<Cache<u64, FromUserAgent>>,
    /// Per-process key, so nobody can aim a colliding user agent at a cached entry.
    hash_key: RandomState,
}

impl UaParser {
    /// Compiles the vendored uap-core rules with ours in front (about 0.3 s in a release build:
    /// do it once at start) and sets up a cache of `cache_capacity` distinct user agents (0
    /// disables the cache).
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
        let local: ua_parser::Regexes<'static> = serde_saphyr::from_str(LOCAL_YAML)?;
        let upstream: ua_parser::Regexes<'static> = serde_saphyr::from_str(REGEXES_YAML)?;
        // First match wins, so ours go in front.
        let regexes = ua_parser::Regexes {
            user_agent_parsers: local
                .user_agent_parsers
                .into_iter()
                .chain(upstream.user_agent_parsers)
                .collect(),
            os_parsers: local
                .os_parsers
                .into_iter()
                .chain(upstream.os_parsers)
                .collect(),
            device_parsers: local
                .device_parsers
                .into_iter()
                .chain(upstream.device_parsers)
                .collect(),
        };
        let rules = ua_parser::Extractor::try_from(regexes)?;
        let cache = (cache_capacity > 0).then(|| Cache::new(cache_capacity));
        Ok(UaParser {
            rules,
            cache,
            hash_key: RandomState::new(),
        })
    }

    /// Classifies one request from the raw bytes of its User-Agent value and of every field line
    /// of `Sec-CH-UA` and of `Sec-CH-UA-Platform`, in the order received (an `Option` serves
    /// for a single value; `HeaderMap::get_all` for all of them). Several lines of one field are
    /// read as their comma-joined value (RFC 9110 §5.3, RFC 8941 §4.2): `Sec-CH-UA` as one list,
    /// and `Sec-CH-UA-Platform`, which must be a single string, as malformed.
    ///
    /// Absent, empty, malformed, non-UTF-8 or huge values never fail and never panic: they
    /// give the [`Device::UNKNOWN`] parts, or leave the User-Agent's answer unrefined.
    pub fn parse<'h>(
        &self,
        user_agent: Option<&[u8]>,
        sec_ch_ua: impl IntoIterator<Item = &'h [u8]>,
        sec_ch_ua_platform: impl IntoIterator<Item = &'h [u8]>,
    ) -> Device {
        let from_ua = match user_agent {
            Some(ua) if !ua.is_empty() => self.parse_user_agent_cached(ua),
            _ => FromUserAgent::UNKNOWN,
        };
        refine_with_hints(from_ua, sec_ch_ua, sec_ch_ua_platform)
    }

    /// The User-Agent part, cached. Hints are applied after the cache (they are cheap), so one
    /// entry serves every hint combination sent with the same user agent.
    fn parse_user_agent_cached(&self, user_agent: &[u8]) -> FromUserAgent {
        let ua = &user_agent[..user_agent.len().min(MAX_UA_BYTES)];
        let Some(cache) = &self.cache else {
            return self.parse_user_agent(ua);
        };
        let mut hasher = self.hash_key.build_hasher();
        hasher.write(ua);
        let key = hasher.finish();
        if let Some(found) = cache.get(&key) {
            return found;
        }
        let found = self.parse_user_agent(ua);
        cache.insert(key, found);
        found
    }

    /// The User-Agent part, uncached. `ua` is already capped to [`MAX_UA_BYTES`].
    fn parse_user_agent(&self, ua: &[u8]) -> FromUserAgent {
        // A cap can split a character and garbage may not be UTF-8 at all: match the valid prefix.
        let ua = match std::str::from_utf8(ua) {
            Ok(s) => s,
            Err(e) => std::str::from_utf8(&ua[..e.valid_up_to()]).unwrap_or_default(),
        };
        if ua.trim().is_empty() {
            return FromUserAgent::UNKNOWN;
        }
        let (browser, browser_major, open_to_hints, ua_family_is_bot) =
            match self.rules.ua.extract(ua) {
                Some(v) => {
                    let browser = Browser::from_uap_family(&v.family);
                    let major = if browser == Browser::Other {
                        None
                    } else {
                        v.major.and_then(|m| m.parse::<u16>().ok())
                    };
                    let open = names_only_a_chromium_build(&v.family);
                    (browser, major, open, is_bot_family(&v.family))
                }
                None => (Browser::Other, None, true, false),
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
        FromUserAgent {
            device: Device {
                browser,
                browser_major,
                os,
                bot,
            },
            open_to_hints: open_to_hints && !bot,
        }
    }
}

/// uap-core families that name a Chromium build rather than the product built on it (Edge,
/// Opera, Brave and Samsung Internet send the same User-Agent when they hide their token), and
/// "Other", the family of no match.
fn names_only_a_chromium_build(family: &str) -> bool {
    matches!(
        family,
        "Chrome" | "Chrome Mobile" | "Chrome Mobile WebView" | "Chromium" | "Other"
    )
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

/// Applies Client Hints on top of what the User-Agent said (see the module doc for the rule).
/// A hint that cannot be parsed or names nothing known leaves the User-Agent's answer in place.
fn refine_with_hints<'h>(
    from_ua: FromUserAgent,
    sec_ch_ua: impl IntoIterator<Item = &'h [u8]>,
    platform: impl IntoIterator<Item = &'h [u8]>,
) -> Device {
    let mut device = from_ua.device;
    if let Some(hint) = brand_from_sec_ch_ua(sec_ch_ua) {
        // Only automation calls itself HeadlessChrome; a User-Agent can be set, this brand
        // is forgotten more often.
        device.bot |= hint.rank == BrandRank::Headless;
        let same_family = hint.browser == device.browser;
        if from_ua.open_to_hints {
            device.browser_major = match hint.major {
                Some(major) => Some(major),
                None if same_family => device.browser_major,
                None => None,
            };
            device.browser = hint.browser;
        } else if same_family && hint.major.is_some() {
            device.browser_major = hint.major;
        }
    }
    if let Some(os) = platform_from_hint(platform) {
        device.os = os;
    }
    device
}

/// The OS that `Sec-CH-UA-Platform` names. Its value is one sf-string (RFC 8941 §3.3.3), so
/// several field lines, which join into a list, name nothing.
fn platform_from_hint<'h>(lines: impl IntoIterator<Item = &'h [u8]>) -> Option<Os> {
    let mut lines = lines.into_iter();
    let value = lines.next()?;
    if lines.next().is_some() {
        return None;
    }
    platform_of(value)
}

/// How specific a `Sec-CH-UA` brand is; the most specific in a list wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum BrandRank {
    /// "Chromium": any Chromium-based browser.
    Engine,
    /// A named browser: "Google Chrome", "Microsoft Edge", "Android WebView", …
    Product,
    /// "HeadlessChrome": automation, whatever else the list says.
    Headless,
}

/// The most specific known brand of a `Sec-CH-UA` list, as a recorded family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BrandHint {
    rank: BrandRank,
    browser: Browser,
    /// Major version from the brand's `v` parameter; always `None` for [`Browser::Other`].
    major: Option<u16>,
}

/// Picks the most specific known brand of a `Sec-CH-UA` field, given as its field lines (read
/// as one comma-joined list). Unknown brands (Brave, Vivaldi, …) and GREASE brands are
/// skipped, so a Chromium-based browser we do not name is recorded as Chrome, as its
/// User-Agent would be. A malformed list is ignored as a whole, as RFC 8941 parsers do.
fn brand_from_sec_ch_ua<'h>(lines: impl IntoIterator<Item = &'h [u8]>) -> Option<BrandHint> {
    let mut lines = lines.into_iter();
    let first = lines.next()?;
    let Some(second) = lines.next() else {
        return best_brand(first);
    };
    // Parse the joined value itself (RFC 8941 §4.2), so that a string or a parameter that runs
    // from one line into the next reads as it would joined.
    let mut joined = Joined::new();
    joined.push(first);
    for line in std::iter::once(second).chain(lines) {
        joined.push(b", ");
        joined.push(line);
    }
    best_brand(joined.as_slice())
}

/// Field lines joined on the stack; on the heap only past [`Joined::STACK`] bytes, which no
/// browser's `Sec-CH-UA` comes near.
struct Joined {
    stack: [u8; Joined::STACK],
    len: usize,
    heap: Option<Vec<u8>>,
}

impl Joined {
    const STACK: usize = 1024;

    fn new() -> Joined {
        Joined {
            stack: [0; Joined::STACK],
            len: 0,
            heap: None,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        if let Some(heap) = &mut self.heap {
            heap.extend_from_slice(bytes);
            return;
        }
        match self.stack.get_mut(self.len..self.len + bytes.len()) {
            Some(room) => {
                room.copy_from_slice(bytes);
                self.len += bytes.len();
            }
            None => {
                let mut heap = self.stack[..self.len].to_vec();
                heap.extend_from_slice(bytes);
                self.heap = Some(heap);
            }
        }
    }

    fn as_slice(&self) -> &[u8] {
        self.heap.as_deref().unwrap_or(&self.stack[..self.len])
    }
}

/// The most specific known brand of one `Sec-CH-UA` value, `None` if it is malformed.
///
/// The value is an RFC 8941 List (§3.1) parsed by [`sfv`]'s visitor, which borrows from the
/// input and so allocates nothing for the strings browsers send. Every entry must be an
/// sf-string; an entry of another type (an inner list, a token, a number) spoils the field as a
/// syntax error does, and the whole value is ignored.
fn best_brand(list: &[u8]) -> Option<BrandHint> {
    let mut brands = Brands::default();
    Parser::new(list)
        .with_version(Version::Rfc8941)
        .parse_list_with_visitor(&mut brands)
        .ok()?;
    if brands.other_entry {
        return None;
    }
    brands.best
}

/// What the visitor has seen of a `Sec-CH-UA` list so far. Read only once the whole list has
/// parsed (the visitor runs before the input is known to be valid).
#[derive(Default)]
struct Brands {
    best: Option<BrandHint>,
    /// An entry that is not an sf-string was seen.
    other_entry: bool,
}

impl<'de> ListVisitor<'de> for &mut Brands {
    type Out = ();
    type Error = Infallible;

    fn entry(&mut self) -> Result<impl EntryVisitor<'de>, Infallible> {
        Ok(BrandEntry(self))
    }

    fn finish(self) -> Result<(), Infallible> {
        Ok(())
    }
}

/// One entry of a `Sec-CH-UA` list.
struct BrandEntry<'a>(&'a mut Brands);

impl<'de> EntryVisitor<'de> for BrandEntry<'_> {
    type Error = Infallible;

    fn item(self) -> Result<impl ItemVisitor<'de>, Infallible> {
        Ok(self)
    }

    fn inner_list(self) -> Result<impl InnerListVisitor<'de>, Infallible> {
        self.0.other_entry = true;
        Ok(Ignored)
    }
}

impl<'de> ItemVisitor<'de> for BrandEntry<'_> {
    type Out = ();
    type Error = Infallible;

    fn bare_item(
        self,
        bare_item: BareItemFromInput<'de>,
    ) -> Result<impl ParameterVisitor<'de, Out = ()>, Infallible> {
        let brand = match bare_item {
            BareItemFromInput::String(brand) if is_grease(brand.as_str().as_bytes()) => None,
            BareItemFromInput::String(brand) => known_brand(brand.as_str().as_bytes()),
            _ => {
                self.0.other_entry = true;
                None
            }
        };
        Ok(BrandParameters {
            brands: self.0,
            brand,
            major: None,
        })
    }
}

/// The parameters of one brand: only `v`, its version, counts (the last one, RFC 8941 §4.2.3.2).
struct BrandParameters<'a> {
    brands: &'a mut Brands,
    brand: Option<(BrandRank, Browser)>,
    major: Option<u16>,
}

impl<'de> ParameterVisitor<'de> for BrandParameters<'_> {
    type Out = ();
    type Error = Infallible;

    fn parameter(
        &mut self,
        key: &'de KeyRef,
        value: BareItemFromInput<'de>,
    ) -> Result<(), Infallible> {
        if key.as_str() == "v" {
            self.major = major_of(&value);
        }
        Ok(())
    }

    fn finish(self) -> Result<(), Infallible> {
        let Some((rank, browser)) = self.brand else {
            return Ok(());
        };
        if self.brands.best.is_none_or(|b| rank > b.rank) {
            let major = if browser == Browser::Other {
                None
            } else {
                self.major
            };
            self.brands.best = Some(BrandHint {
                rank,
                browser,
                major,
            });
        }
        Ok(())
    }
}

/// The major version a brand's `v` parameter gives: the leading digits of a string
/// (`"131.0.6778.86"`), or the whole part of a non-negative number (`131`, `26.5`).
fn major_of(version: &BareItemFromInput<'_>) -> Option<u16> {
    match version {
        BareItemFromInput::String(v) => parse_major(v.as_str().as_bytes()),
        BareItemFromInput::Integer(v) => u16::try_from(i64::from(*v)).ok(),
        BareItemFromInput::Decimal(v) => {
            u16::try_from(i64::from(v.as_integer_scaled_1000()) / 1000).ok()
        }
        _ => None,
    }
}

fn known_brand(brand: &[u8]) -> Option<(BrandRank, Browser)> {
    use BrandRank::{Engine, Headless, Product};
    let product = |b| Some((Product, b));
    match brand {
        b"Google Chrome" | b"Android WebView" => product(Browser::Chrome),
        b"Chromium" => Some((Engine, Browser::Chrome)),
        b"HeadlessChrome" => Some((Headless, Browser::Other)),
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

/// The value of a field that is one sf-string (RFC 8941 §3.3.3), such as
/// `Sec-CH-UA-Platform: "macOS"`, parsed as an Item by [`sfv`]; `None` when it is anything else
/// or malformed. Parameters are read and ignored.
fn platform_of(field: &[u8]) -> Option<Os> {
    Parser::new(field)
        .with_version(Version::Rfc8941)
        .parse_item_with_visitor(PlatformItem)
        .ok()
        .flatten()
}

/// Reads a `Sec-CH-UA-Platform` Item: the OS its sf-string names.
struct PlatformItem;

impl<'de> ItemVisitor<'de> for PlatformItem {
    type Out = Option<Os>;
    type Error = Infallible;

    fn bare_item(
        self,
        bare_item: BareItemFromInput<'de>,
    ) -> Result<impl ParameterVisitor<'de, Out = Option<Os>>, Infallible> {
        let os = match bare_item {
            BareItemFromInput::String(name) => Os::from_platform_hint(name.as_str().as_bytes()),
            _ => None,
        };
        Ok(parameter_visitor_with(Ignored, move |()| Ok(os)))
    }
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
                "TikTok",
                "Snapchat",
                "LinkedIn",
                "LINE",
                "WeChat",
                "Google App",
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
        // RFC 8941 as sfv reads it. The version: the last `v`, the whole part of a number, the
        // leading digits of a string; any other type has none.
        (Some(r#""Opera";v=115.7"#), None, B::Opera, Some(115), O::Windows),
        (Some(r#""Opera";v=-115"#), None, B::Opera, None, O::Windows),
        (Some(r#""Opera";v"#), None, B::Opera, None, O::Windows),
        (Some(r#""Opera";v=?1"#), None, B::Opera, None, O::Windows),
        (Some(r#""Opera";v=:MTE1:"#), None, B::Opera, None, O::Windows),
        (Some(r#""Opera";v=x115"#), None, B::Opera, None, O::Windows),
        (Some(r#""Opera";v="1";v="115""#), None, B::Opera, Some(115), O::Windows),
        (Some(r#""Opera";v="115";*x=1;y"#), None, B::Opera, Some(115), O::Windows),
        // Spaces around the list and after a `;`, spaces and tabs around its commas.
        (Some(r#""Opera"; v="115""#), None, B::Opera, Some(115), O::Windows),
        (Some(r#"  "Opera";v="115"  "#), None, B::Opera, Some(115), O::Windows),
        (Some("\"Chromium\";v=\"130\" ,\t \"Opera\";v=\"115\""), None, B::Opera, Some(115), O::Windows),
        // An escape is read; an unknown escape or a character outside ASCII spoils the list.
        (Some(r#""Opera";v="115", "Not\"A\\Brand""#), None, B::Opera, Some(115), O::Windows),
        (Some(r#""Opera";v="115", "Bad\x""#), None, B::Chrome, Some(131), O::Windows),
        (Some(r#""Opera";v="115", "Ópera""#), None, B::Chrome, Some(131), O::Windows),
        // Malformed: the User-Agent stands. Whitespace where RFC 8941 has none, a tab before
        // the list, a key that does not start with a lowercase letter or `*`, RFC 9651 types.
        (Some(r#""Opera" ;v="115""#), None, B::Chrome, Some(131), O::Windows),
        (Some("\t\"Opera\";v=\"115\""), None, B::Chrome, Some(131), O::Windows),
        (Some(r#""Opera";v="115";1x=1"#), None, B::Chrome, Some(131), O::Windows),
        (Some(r#""Opera";v=@1700000000"#), None, B::Chrome, Some(131), O::Windows),
        (Some(r#""Opera";v=%"115""#), None, B::Chrome, Some(131), O::Windows),
        // Every entry must be a string: an inner list, a token or a number spoils the field.
        (Some(r#"("Opera" "Chromium")"#), None, B::Chrome, Some(131), O::Windows),
        (Some(r#"Opera;v="115""#), None, B::Chrome, Some(131), O::Windows),
        (Some(r#""Opera";v="115", 1"#), None, B::Chrome, Some(131), O::Windows),
        // Sec-CH-UA-Platform is one sf-string Item: parameters are ignored; a token, a number or
        // a list names nothing.
        (None, Some(r#""macOS";x=1"#), B::Chrome, Some(131), O::MacOs),
        (None, Some("macOS"), B::Chrome, Some(131), O::Windows),
        (None, Some("1"), B::Chrome, Some(131), O::Windows),
        (None, Some(r#""macOS", "Linux""#), B::Chrome, Some(131), O::Windows),
        (None, Some(r#"("macOS")"#), B::Chrome, Some(131), O::Windows),
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

    // User agents for the table below: in-app browsers, web views, iOS browsers in desktop mode.
    const IG_ANDROID: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8 Build/AP2A.240805.005; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/127.0.6533.103 Mobile Safari/537.36 Instagram 344.0.0.34.90 Android (34/14; 420dpi; 1080x2400; Google/google; Pixel 8; shiba; shiba; en_US; 634108168)";
    /// A tablet's web view has no "Mobile" token.
    const IG_ANDROID_TABLET: &str = "Mozilla/5.0 (Linux; Android 13; SM-X700 Build/TP1A.220624.014; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/127.0.6533.103 Safari/537.36 Instagram 344.0.0.34.90 Android (33/13; 320dpi; 1600x2560; samsung; SM-X700; gts8wifi; qcom; en_US; 634108168)";
    const IG_IPAD: &str = "Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 Instagram 340.0.3.23.95 (iPad13,16; iPadOS 17_5; en_US; en; scale=2.00; 820x1180; 624110617)";
    const FB_ANDROID: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8 Build/AP2A.240805.005; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/127.0.6533.103 Mobile Safari/537.36 [FB_IAB/FB4A;FBAV/477.0.0.49.82;]";
    const FB_ANDROID_TABLET: &str = "Mozilla/5.0 (Linux; Android 14; Pixel Tablet Build/AP2A.240805.005; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/127.0.6533.103 Safari/537.36 [FB_IAB/FB4A;FBAV/477.0.0.49.82;]";
    const WEBVIEW: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8 Build/AP2A.240805.005; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/127.0.6533.103 Mobile Safari/537.36";
    const CHROME_MAC: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";
    const EDGE_WIN: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0";
    const SAMSUNG: &str = "Mozilla/5.0 (Linux; Android 14; SAMSUNG SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/26.0 Chrome/122.0.0.0 Mobile Safari/537.36";
    const FIREFOX_WIN: &str =
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0";
    /// Safari on a Mac, and on an iPad in desktop mode: the same bytes.
    const SAFARI_MAC: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15";

    // Sec-CH-UA values as browsers send them.
    const CH_WEBVIEW: &str =
        r#""Not)A;Brand";v="99", "Android WebView";v="127", "Chromium";v="127""#;
    const CH_CHROME: &str = r#""Chromium";v="131", "Google Chrome";v="131", "Not_A Brand";v="24""#;
    const CH_EDGE: &str = r#""Microsoft Edge";v="131", "Chromium";v="131", "Not_A Brand";v="24""#;

    /// (User-Agent, Sec-CH-UA lines, Sec-CH-UA-Platform lines) → (browser, major, os, bot).
    type Row = (
        Option<&'static str>,
        &'static [&'static str],
        &'static [&'static str],
        Browser,
        Option<u16>,
        Os,
        bool,
    );

    #[rustfmt::skip]
    const FAMILY_ROWS: &[Row] = &[
        // In-app browsers: the web view's hint refines the OS, never the app's family.
        (Some(IG_ANDROID), &[CH_WEBVIEW], &[r#""Android""#], B::Instagram, Some(344), O::Android, false),
        (Some(IG_ANDROID), &[], &[], B::Instagram, Some(344), O::Android, false),
        (Some(IG_ANDROID_TABLET), &[], &[], B::Instagram, Some(344), O::Android, false),
        (Some(IG_ANDROID_TABLET), &[CH_WEBVIEW], &[r#""Android""#], B::Instagram, Some(344), O::Android, false),
        (Some("Instagram 415.0.0.36.76 Android (33/13; 320dpi; 720x1600; samsung; SM-A032M; a3core; m168; pt_BR; 874816631)"), &[CH_WEBVIEW], &[r#""Android""#], B::Instagram, Some(415), O::Android, false),
        (Some(IG_IPAD), &[], &[], B::Instagram, Some(340), O::Ios, false),
        (Some(FB_ANDROID), &[CH_WEBVIEW], &[r#""Android""#], B::Facebook, Some(477), O::Android, false),
        (Some(FB_ANDROID), &[], &[], B::Facebook, Some(477), O::Android, false),
        (Some(FB_ANDROID_TABLET), &[CH_WEBVIEW], &[r#""Android""#], B::Facebook, Some(477), O::Android, false),
        (Some("Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 [FBAN/FBIOS;FBAV/480.0.0.38.109;FBBV/647427361;FBDV/iPad13,16;FBMD/iPad;FBSN/iPadOS;FBSV/17.5;FBSS/2;FBID/tablet;FBLC/en_US;FBOP/5;FBRV/649398478]"), &[], &[], B::Facebook, Some(480), O::Ios, false),
        // A hint with a version other than the web view's changes nothing either.
        (Some(IG_ANDROID), &[r#""Android WebView";v="131", "Chromium";v="131""#], &[], B::Instagram, Some(344), O::Android, false),
        (Some("Mozilla/5.0 (Linux; Android 10; moto g(7) Build/QP6_S30.52-23-13-4; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/108.0.5359.128 Mobile Safari/537.36 musical_ly_2022704050 JsSdk/1.0 NetType/WIFI Channel/googleplay AppName/musical_ly app_version/27.4.5 ByteLocale/en ByteFullLocale/en Region/US Spark/1.2.4-alpha.5 AppVersion/27.4.5 PIA/1.5.10 BytedanceWebview/d8a21c6"), &[r#""Android WebView";v="108", "Chromium";v="108", "Not?A_Brand";v="8""#], &[r#""Android""#], B::TikTok, Some(27), O::Android, false),
        (Some("Mozilla/5.0 (iPhone; CPU iPhone OS 17_3_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.3.1 Mobile/15E148 Safari/604.1 musical_ly_34.3.1 JsSdk/2.0 NetType/4G Channel/App Store ByteLocale/en Region/US isDarkMode/1 WKWebView/1 RevealType/Dialog"), &[], &[], B::TikTok, Some(34), O::Ios, false),
        (Some("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 BytedanceWebview/d8a21c6 trill_34.9.0 JsSdk/2.0 NetType/4G Channel/App Store ByteLocale/en Region/MY"), &[], &[], B::TikTok, Some(34), O::Ios, false),
        (Some("Mozilla/5.0 (Linux; Android 14; Pixel 8 Build/AP2A.240805.005; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/127.0.6533.103 Mobile Safari/537.36 Snapchat/13.1.0.39 (like Safari/8618.3.11.10.5, panda)"), &[CH_WEBVIEW], &[r#""Android""#], B::Snapchat, Some(13), O::Android, false),
        (Some("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 Snapchat/13.1.0.39 (like Safari/8618.3.11.10.5, panda)"), &[], &[], B::Snapchat, Some(13), O::Ios, false),
        (Some("Mozilla/5.0 (Linux; Android 14; Pixel 8 Build/AP2A.240805.005; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/127.0.6533.103 Mobile Safari/537.36 [LinkedInApp]"), &[CH_WEBVIEW], &[r#""Android""#], B::LinkedIn, None, O::Android, false),
        (Some("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 [LinkedInApp]/9.30.2144"), &[], &[], B::LinkedIn, Some(9), O::Ios, false),
        (Some("Mozilla/5.0 (Linux; Android 14; Pixel 8 Build/AP2A.240805.005; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/127.0.6533.103 Mobile Safari/537.36 Line/14.12.0/IAB"), &[CH_WEBVIEW], &[r#""Android""#], B::Line, Some(14), O::Android, false),
        (Some("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 Safari Line/14.12.0"), &[], &[], B::Line, Some(14), O::Ios, false),
        (Some("Mozilla/5.0 (Linux; Android 14; Pixel 8 Build/AP2A.240805.005; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/127.0.6533.103 Mobile Safari/537.36 XWEB/1300133 MMWEBSDK/20240501 MMWEBID/1234 MicroMessenger/8.0.50.2701(0x2800325B) WeChat/arm64 Weixin NetType/WIFI Language/en ABI/arm64"), &[CH_WEBVIEW], &[r#""Android""#], B::WeChat, Some(8), O::Android, false),
        (Some("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.50(0x1800322d) NetType/WIFI Language/en"), &[], &[], B::WeChat, Some(8), O::Ios, false),
        (Some("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36 NetType/WIFI MicroMessenger/7.0.20.1781(0x6700143B) WindowsWechat(0x63090c33) XWEB/14315"), &[r#""Chromium";v="126", "Not.A/Brand";v="24""#], &[r#""Windows""#], B::WeChat, Some(7), O::Windows, false),
        (Some("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) GSA/327.0.655238180 Mobile/15E148 Safari/604.1"), &[], &[], B::GoogleApp, Some(327), O::Ios, false),
        (Some("Mozilla/5.0 (Linux; Android 14; Pixel 8 Build/AP2A.240805.005; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/127.0.6533.103 Mobile Safari/537.36 GSA/15.30.27.29.arm64"), &[CH_WEBVIEW], &[r#""Android""#], B::GoogleApp, Some(15), O::Android, false),
        // An app we do not name stays Other: its web view's hint does not make it Chrome.
        (Some("Mozilla/5.0 (Linux; Android 14; Pixel 8 Build/AP2A.240805.005; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/127.0.6533.103 Mobile Safari/537.36 [Pinterest/Android]"), &[CH_WEBVIEW], &[r#""Android""#], B::Other, None, O::Android, false),
        // A web view of no named app is Chrome; its hint refines the version.
        (Some(WEBVIEW), &[], &[], B::Chrome, Some(127), O::Android, false),
        (Some(WEBVIEW), &[CH_WEBVIEW], &[r#""Android""#], B::Chrome, Some(127), O::Android, false),
        (Some(WEBVIEW), &[r#""Android WebView";v="128", "Chromium";v="128""#], &[], B::Chrome, Some(128), O::Android, false),

        // Chromium-based browsers, with and without hints.
        (Some(EDGE_WIN), &[], &[], B::Edge, Some(131), O::Windows, false),
        (Some(EDGE_WIN), &[CH_EDGE], &[r#""Windows""#], B::Edge, Some(131), O::Windows, false),
        // The same family in the hint: its version refines the User-Agent's.
        (Some(EDGE_WIN), &[r#""Microsoft Edge";v="132", "Chromium";v="132""#], &[], B::Edge, Some(132), O::Windows, false),
        // A hint that contradicts a named family does not replace it.
        (Some(EDGE_WIN), &[CH_CHROME], &[], B::Edge, Some(131), O::Windows, false),
        (Some(SAMSUNG), &[r#""Samsung Internet";v="26.0", "Chromium";v="122", "Not(A:Brand";v="24""#], &[r#""Android""#], B::SamsungInternet, Some(26), O::Android, false),
        (Some(SAMSUNG), &[r#""Chromium";v="122", "Not(A:Brand";v="24""#], &[], B::SamsungInternet, Some(26), O::Android, false),
        (Some(SAMSUNG), &[], &[], B::SamsungInternet, Some(26), O::Android, false),
        (Some("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36 OPR/115.0.0.0"), &[r#""Not A(Brand";v="99", "Opera";v="115", "Chromium";v="130""#], &[r#""Linux""#], B::Opera, Some(115), O::Linux, false),
        (Some("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36 OPR/115.0.0.0"), &[r#""Opera GX";v="115", "Chromium";v="130", "Not?A_Brand";v="24""#], &[], B::Opera, Some(115), O::Windows, false),
        (Some("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 YaBrowser/24.7.0.0 Safari/537.36"), &[r#""Chromium";v="126", "Not.A/Brand";v="24", "YaBrowser";v="24.7""#], &[r#""Windows""#], B::YandexBrowser, Some(24), O::Windows, false),
        (Some("Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36 EdgA/131.0.0.0"), &[CH_EDGE], &[r#""Android""#], B::Edge, Some(131), O::Android, false),
        // Tokens 0.18.0 does not know, hidden behind Chrome or Safari without the local rules.
        (Some("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/144.0.7559.109 Safari/537.36 OPX/3.1"), &[], &[], B::Opera, Some(3), O::Linux, false),
        (Some("Mozilla/5.0 (Linux; Android 16; SM-X115 Build/BP2A.250605.031.A3) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/145.0.7632.79 Safari/537.36 OPT/2.9"), &[], &[], B::Opera, Some(2), O::Android, false),
        (Some("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1 OPT/5.0.2"), &[], &[], B::Opera, Some(5), O::Ios, false),
        (Some("Mozilla/5.0 (Linux; Android 16; en-US; SM-S918B Build/BP2A.250605.031.A3) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/123.0.6312.80 UCMobile/15.0.7.1383 Mobile Safari/537.36"), &[r#""Chromium";v="123""#], &[], B::UcBrowser, Some(15), O::Android, false),
        (Some("Mozilla/5.0 (Linux; arm; Android 10; M2006C3MNG) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/110.0.0.0 YaApp_Android/23.36.1 YaSearchBrowser/23.36.1 BroPP/1.0 SA/3 Mobile Safari/537.36"), &[], &[], B::YandexBrowser, Some(23), O::Android, false),
        // A User-Agent that names only Chrome: the hint says which product it is.
        (Some(CHROME_MAC), &[CH_EDGE], &[r#""macOS""#], B::Edge, Some(131), O::MacOs, false),
        (Some(CHROME_MAC), &[r#""Samsung Internet";v="27.0", "Chromium";v="125""#], &[], B::SamsungInternet, Some(27), O::MacOs, false),
        (Some(CHROME_MAC), &[CH_CHROME], &[r#""macOS""#], B::Chrome, Some(131), O::MacOs, false),
        (Some(CHROME_MAC), &[r#""Google Chrome";v="132", "Chromium";v="132""#], &[], B::Chrome, Some(132), O::MacOs, false),
        // A hint without a version keeps the User-Agent's version of the same family only.
        (Some(CHROME_MAC), &[r#""Google Chrome", "Not_A Brand""#], &[], B::Chrome, Some(131), O::MacOs, false),
        // Brave names itself only in the hint, and is not a family of ours: Chrome, as its UA says.
        (Some(CHROME_MAC), &[r#""Brave";v="131", "Chromium";v="131", "Not_A Brand";v="24""#], &[], B::Chrome, Some(131), O::MacOs, false),
        // GREASE alone, or nothing known: the User-Agent stands.
        (Some(CHROME_MAC), &[r#""Not A(Brand";v="99""#], &[], B::Chrome, Some(131), O::MacOs, false),
        (Some(CHROME_MAC), &[r#""Not A(Brand";v="8", "Vivaldi";v="7""#], &[], B::Chrome, Some(131), O::MacOs, false),
        // Non-Chromium browsers send no Sec-CH-UA; one that appears does not rename them.
        (Some(FIREFOX_WIN), &[CH_CHROME], &[r#""Windows""#], B::Firefox, Some(133), O::Windows, false),
        (Some(SAFARI_MAC), &[CH_EDGE], &[], B::Safari, Some(17), O::MacOs, false),
        // No User-Agent at all: the hints are all there is.
        (None, &[CH_CHROME], &[r#""Android""#], B::Chrome, Some(131), O::Android, false),
        (None, &[], &[r#""Windows""#], B::Other, None, O::Windows, false),

        // iOS browsers, and iPadOS in desktop mode.
        (Some("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) EdgiOS/126.0.2592.80 Version/17.0 Mobile/15E148 Safari/604.1"), &[], &[], B::Edge, Some(126), O::Ios, false),
        (Some("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) EdgiOS/108 Version/13.0.3 Safari/605.1.15"), &[], &[], B::Edge, Some(108), O::Ios, false),
        (Some("Mozilla/5.0 (iPhone; CPU iPhone OS 17_7 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) FxiOS/132.0 Mobile/15E148 Safari/605.1.15"), &[], &[], B::Firefox, Some(132), O::Ios, false),
        (Some("Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15) AppleWebKit/605.1.15 (KHTML, like Gecko) FxiOS/132.0 Safari/605.1.15"), &[], &[], B::Firefox, Some(132), O::Ios, false),
        (Some("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/118.0.5993.92 Mobile/15E148 Safari/605.1.15"), &[], &[], B::Chrome, Some(118), O::Ios, false),
        (Some("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/118 Version/11.1.1 Safari/605.1.15"), &[], &[], B::Chrome, Some(118), O::Ios, false),
        (Some("Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/118.0.5993.92 Mobile/15E148 Safari/604.1"), &[], &[], B::Chrome, Some(118), O::Ios, false),
        // Safari on an iPad in desktop mode sends a Mac's bytes: it can only be recorded as one.
        (Some(SAFARI_MAC), &[], &[], B::Safari, Some(17), O::MacOs, false),
        (Some("Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1"), &[], &[], B::Safari, Some(17), O::Ios, false),
        // An app's WKWebView with no product token: Safari's engine, version unknown.
        (Some("Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148"), &[], &[], B::Safari, None, O::Ios, false),

        // Sec-CH-UA-Platform: a known system replaces the User-Agent's (Chrome for Android's
        // "desktop site" claims Linux); "Unknown" or a system we do not name leaves it.
        (Some("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"), &[CH_CHROME], &[r#""Android""#], B::Chrome, Some(131), O::Android, false),
        (Some(CHROME_MAC), &[], &[r#""Windows""#], B::Chrome, Some(131), O::Windows, false),
        (Some(CHROME_MAC), &[], &[r#""Linux""#], B::Chrome, Some(131), O::Linux, false),
        (Some(CHROME_MAC), &[], &[r#""Chrome OS""#], B::Chrome, Some(131), O::ChromeOs, false),
        (Some(CHROME_MAC), &[], &[r#""iOS""#], B::Chrome, Some(131), O::Ios, false),
        (Some(WEBVIEW), &[], &[r#""macOS""#], B::Chrome, Some(127), O::MacOs, false),
        (Some(CHROME_MAC), &[], &[r#""Unknown""#], B::Chrome, Some(131), O::MacOs, false),
        (Some(CHROME_MAC), &[], &[r#""Fuchsia""#], B::Chrome, Some(131), O::MacOs, false),
        (Some(CHROME_MAC), &[], &["Windows"], B::Chrome, Some(131), O::MacOs, false),
        // Two lines join into a list, which is not a platform.
        (Some(CHROME_MAC), &[], &[r#""Windows""#, r#""Windows""#], B::Chrome, Some(131), O::MacOs, false),

        // Sec-CH-UA in several field lines is one comma-joined list.
        (Some(CHROME_MAC), &[r#""Chromium";v="131""#, r#""Microsoft Edge";v="131""#], &[], B::Edge, Some(131), O::MacOs, false),
        (Some(CHROME_MAC), &[r#""Not_A Brand";v="24""#, r#""Opera";v="115", "Chromium";v="130""#], &[], B::Opera, Some(115), O::MacOs, false),
        (Some(IG_ANDROID), &[r#""Android WebView";v="127""#, r#""Chromium";v="127""#], &[], B::Instagram, Some(344), O::Android, false),
        // ... so one malformed or empty line spoils the list, as it would joined.
        (Some(CHROME_MAC), &[CH_EDGE, "garbage"], &[], B::Chrome, Some(131), O::MacOs, false),
        (Some(CHROME_MAC), &[CH_EDGE, ""], &[], B::Chrome, Some(131), O::MacOs, false),
        (Some(CHROME_MAC), &[CH_EDGE, r#""Opera";v="115","#], &[], B::Chrome, Some(131), O::MacOs, false),
        (Some(CHROME_MAC), &[""], &[], B::Chrome, Some(131), O::MacOs, false),
        (Some(CHROME_MAC), &["", CH_EDGE], &[], B::Chrome, Some(131), O::MacOs, false),
        (Some(CHROME_MAC), &["  ", CH_EDGE], &[], B::Chrome, Some(131), O::MacOs, false),
        // A string or a parameter may run from one line into the next, as it does joined
        // (found by tests/fuzz.rs).
        (Some(CHROME_MAC), &[r#""Microsoft Edge"#, r#"x""#], &[], B::Edge, None, O::MacOs, false),
        (Some(CHROME_MAC), &[r#""Microsoft Edge";v="1"#, r#"32""#], &[], B::Edge, Some(1), O::MacOs, false),
        (Some(CHROME_MAC), &[r#""Google Chrome";v="1"#, r#"31""#], &[], B::Chrome, Some(1), O::MacOs, false),
        (Some(CHROME_MAC), &[r#""Opera";v="115""#, r#"""#], &[], B::Chrome, Some(131), O::MacOs, false),

        // Bots: a hint never makes one a person; HeadlessChrome in the hint makes one a bot.
        (Some("Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.6778.204 Mobile Safari/537.36 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"), &[CH_CHROME], &[r#""Android""#], B::Other, None, O::Android, true),
        (Some("Mozilla/5.0 (compatible; Bytespider; spider-feedback@bytedance.com)"), &[], &[], B::Other, None, O::Other, true),
        (Some("Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.6367.201 Mobile Safari/537.36 (compatible; Google-InspectionTool/1.0;)"), &[], &[], B::Other, None, O::Android, true),
        (Some("Mozilla/5.0 (compatible; Google-InspectionTool/1.0;)"), &[], &[], B::Other, None, O::Other, true),
        (Some("Mozilla/5.0 (compatible; GoogleOther)"), &[], &[], B::Other, None, O::Other, true),
        (Some("curl/8.5.0"), &[CH_CHROME], &[r#""Linux""#], B::Other, None, O::Linux, true),
        (Some("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/131.0.0.0 Safari/537.36"), &[CH_CHROME], &[], B::Other, None, O::Windows, true),
        (Some(CHROME_MAC), &[r#""Chromium";v="131", "HeadlessChrome";v="131", "Not_A Brand";v="24""#], &[r#""macOS""#], B::Other, None, O::MacOs, true),
        (Some(EDGE_WIN), &[r#""HeadlessChrome";v="131""#], &[], B::Edge, Some(131), O::Windows, true),
        (None, &[r#""HeadlessChrome";v="131", "Chromium";v="131""#], &[], B::Other, None, O::Other, true),
    ];

    #[test]
    fn hints_refine_but_never_hide_the_family_the_user_agent_names() {
        let mut failures = Vec::new();
        for &(ua, ch, platform, browser, major, os, bot) in FAMILY_ROWS {
            let want = Device {
                browser,
                browser_major: major,
                os,
                bot,
            };
            for p in [parser(), uncached()] {
                let got = p.parse(
                    ua.map(str::as_bytes),
                    ch.iter().map(|s| s.as_bytes()),
                    platform.iter().map(|s| s.as_bytes()),
                );
                if got != want {
                    failures.push(format!(
                        "{ua:?}\n   Sec-CH-UA {ch:?} platform {platform:?}\n   got  {got:?}\n   want {want:?}"
                    ));
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn long_sec_ch_ua_lines_are_joined_too() {
        let unknown = r#""Brave";v="1", "#.repeat(100);
        for (lines, browser, major) in [
            (
                vec![format!(r#"{unknown}"Opera";v="115""#)],
                B::Opera,
                Some(115),
            ),
            (
                vec![unknown.clone(), r#""Opera";v="115""#.to_owned()],
                B::Chrome,
                Some(131),
            ),
            (
                vec![
                    unknown.trim_end_matches(", ").to_owned(),
                    r#""Opera";v="115""#.to_owned(),
                ],
                B::Opera,
                Some(115),
            ),
            (
                vec![
                    r#""Chromium";v="131""#.to_owned(),
                    format!(r#"{unknown}"Microsoft Edge"#),
                    r#"x";v="1""#.to_owned(),
                ],
                B::Edge,
                Some(1),
            ),
        ] {
            for p in [parser(), uncached()] {
                let got = p.parse(
                    Some(CHROME_MAC.as_bytes()),
                    lines.iter().map(|l| l.as_bytes()),
                    None,
                );
                assert_eq!(
                    (got.browser, got.browser_major),
                    (browser, major),
                    "{lines:?}"
                );
            }
        }
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
