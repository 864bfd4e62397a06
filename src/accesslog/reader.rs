//! Reading day files back: finding the records of one client in `access-D.jsonl`, line by
//! line, for `investigate` and `erase` ([`crate::cli`]).
//!
//! Owns the search of one day file: it is read in large chunks and searched for the bytes
//! `"<pseudonym>"` of each [`Needle`]; only lines holding them are parsed as JSON. A record
//! matches when its `client` is a needle's pseudonym and its `epoch` is the needle's epoch (or
//! any epoch, for a needle without one). Every line goes to a [`Sink`]: runs of other lines
//! byte for byte, each matching record, each line that holds the pseudonym but is not a record.
//! What was read is counted in a [`Tally`] that the reader returns; it knows nothing of the
//! commands' summaries, keys or addresses.
//!
//! # Robustness
//! A torn last line, blank lines, and candidate lines that are not a JSON object with string
//! `client` and `epoch` are skipped and counted; a matching record with fields outside the record
//! schema is still a record of the client (shown, or erased) and is counted. Lines that do not
//! hold the searched pseudonym are never parsed, so junk there is neither counted nor fatal.
//!
//! Must never change, lock or write a day file (the caller does, see [`crate::cli::erase`]),
//! never parse a line that does not hold a searched pseudonym, and never lose or reorder a byte
//! on its way to the sink.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read};
use std::ops::Range;

use memchr::memmem;

use crate::epoch::Epoch;
use crate::privacy::keys::Pseudonym;

/// Bytes read from a day file at a time.
const CHUNK: usize = 8 << 20;

/// One pseudonym looked for in a day file, and the epoch a record must have to match.
pub struct Needle {
    pseudonym: Pseudonym,
    /// `Some`: the record's `epoch` must be this; `None`: any epoch.
    epoch: Option<Epoch>,
    finder: memmem::Finder<'static>,
}

impl Needle {
    /// Looks for records whose `client` is `pseudonym` and whose `epoch` is `epoch` (`None`:
    /// any epoch).
    pub fn new(pseudonym: Pseudonym, epoch: Option<Epoch>) -> Needle {
        let quoted = format!("\"{pseudonym}\"").into_bytes();
        Needle {
            pseudonym,
            epoch,
            finder: memmem::Finder::new(&quoted).into_owned(),
        }
    }

    /// The pseudonym looked for.
    pub fn pseudonym(&self) -> Pseudonym {
        self.pseudonym
    }

    /// The epoch a matching record must have; `None`: any.
    pub fn epoch(&self) -> Option<Epoch> {
        self.epoch
    }
}

/// The parts of a matching record that summaries use, as stored (never re-encoded).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// `ts`, the RFC 3339 UTC time of the response.
    pub ts: Option<String>,
    /// `status`, the HTTP status code.
    pub status: Option<u64>,
    /// `path`, the normalised request path.
    pub path: Option<String>,
    /// Whether the record has fields outside the record schema.
    pub unknown_fields: bool,
}

/// Lines skipped while reading, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Skipped {
    /// A last line without its newline.
    pub torn: u64,
    /// Empty lines.
    pub blank: u64,
    /// Lines holding the searched pseudonym that are not a record (not JSON, no `client`).
    pub invalid: u64,
    /// Matching records with fields outside the record schema (`docs/access-record.schema.json`;
    /// not skipped: shown or erased).
    pub unknown_fields: u64,
}

/// What reading found: the matching records, in aggregate, and the lines skipped.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    /// Matching records.
    pub records: u64,
    /// Earliest `ts` of the matching records.
    pub first_ts: Option<String>,
    /// Latest `ts` of the matching records.
    pub last_ts: Option<String>,
    /// Matching records by status.
    pub statuses: BTreeMap<u64, u64>,
    /// Matching records by path.
    pub paths: HashMap<String, u64>,
    /// Lines skipped.
    pub skipped: Skipped,
}

impl Tally {
    fn add(&mut self, rec: &Record) {
        self.records += 1;
        if let Some(ts) = &rec.ts {
            self.note_ts(ts);
        }
        if let Some(s) = rec.status {
            *self.statuses.entry(s).or_default() += 1;
        }
        if let Some(p) = &rec.path {
            *self.paths.entry(p.clone()).or_default() += 1;
        }
    }

    fn note_ts(&mut self, ts: &str) {
        if self.first_ts.as_deref().is_none_or(|f| ts < f) {
            self.first_ts = Some(ts.to_owned());
        }
        if self.last_ts.as_deref().is_none_or(|l| ts > l) {
            self.last_ts = Some(ts.to_owned());
        }
    }

    /// Adds `other`'s counts to these.
    pub fn merge(&mut self, other: Tally) {
        self.records += other.records;
        for ts in [other.first_ts, other.last_ts].into_iter().flatten() {
            self.note_ts(&ts);
        }
        for (s, n) in other.statuses {
            *self.statuses.entry(s).or_default() += n;
        }
        for (p, n) in other.paths {
            *self.paths.entry(p).or_default() += n;
        }
        let s = &mut self.skipped;
        s.torn += other.skipped.torn;
        s.blank += other.skipped.blank;
        s.invalid += other.skipped.invalid;
        s.unknown_fields += other.skipped.unknown_fields;
    }
}

/// Where the lines of a day file go, in file order.
pub trait Sink {
    /// A run of lines (or a torn tail) that is not the client's, byte for byte.
    fn keep(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// A record of the client, without its newline.
    fn matched(&mut self, line: &[u8], rec: &Record) -> io::Result<()>;
    /// A line holding the pseudonym that is not a record, with its newline if it had one.
    fn invalid(&mut self, line: &[u8]) -> io::Result<()>;
}

/// A sink that drops everything: for a pass that only counts.
pub struct Discard;

impl Sink for Discard {
    fn keep(&mut self, _: &[u8]) -> io::Result<()> {
        Ok(())
    }
    fn matched(&mut self, _: &[u8], _: &Record) -> io::Result<()> {
        Ok(())
    }
    fn invalid(&mut self, _: &[u8]) -> io::Result<()> {
        Ok(())
    }
}

/// The search of one day file (or any byte source) for the records of `needles`.
///
/// [`DayReader::read_available`] reads to the current end and may be called again to read what
/// was appended since; [`DayReader::finish`] handles the incomplete last line; the [`Tally`]
/// counts everything read.
pub struct DayReader<'n, R> {
    lines: Lines<R>,
    needles: &'n [Needle],
    scratch: Vec<(usize, usize)>,
    tally: Tally,
}

impl<'n, R: Read> DayReader<'n, R> {
    /// A reader of `src` looking for `needles`.
    pub fn new(src: R, needles: &'n [Needle]) -> DayReader<'n, R> {
        DayReader::with_chunk(src, needles, CHUNK)
    }

    fn with_chunk(src: R, needles: &'n [Needle], chunk: usize) -> DayReader<'n, R> {
        DayReader {
            lines: Lines::new(src, chunk),
            needles,
            scratch: Vec::new(),
            tally: Tally::default(),
        }
    }

    /// Reads to the current end, sending every whole line to `sink`. The incomplete last line
    /// waits for more bytes, or for [`DayReader::finish`].
    pub fn read_available(&mut self, sink: &mut impl Sink) -> io::Result<()> {
        while let Some(range) = self.lines.next_region()? {
            let region = self.lines.region(range);
            self.tally.skipped.blank += count_blank(region, self.lines.at_line_start);
            candidates(region, self.needles, &mut self.scratch);
            let mut kept_to = 0;
            for &(start, end) in self.scratch.iter() {
                let line = &region[start..end];
                let with_nl = &region[start..(end + 1).min(region.len())];
                match judge(line, self.needles) {
                    Verdict::Other => continue,
                    Verdict::Match(rec) => {
                        sink.keep(&region[kept_to..start])?;
                        if rec.unknown_fields {
                            self.tally.skipped.unknown_fields += 1;
                        }
                        self.tally.add(&rec);
                        sink.matched(line, &rec)?;
                    }
                    Verdict::Invalid => {
                        sink.keep(&region[kept_to..start])?;
                        self.tally.skipped.invalid += 1;
                        sink.invalid(with_nl)?;
                    }
                }
                kept_to = start + with_nl.len();
            }
            sink.keep(&region[kept_to..])?;
        }
        Ok(())
    }

    /// Handles the incomplete last line, once [`DayReader::read_available`] reached the end:
    /// counted as torn, and sent to `sink` as invalid if it holds a pseudonym, else kept.
    pub fn finish(&mut self, sink: &mut impl Sink) -> io::Result<()> {
        let tail = self.lines.tail();
        if tail.is_empty() {
            return Ok(());
        }
        self.tally.skipped.torn += 1;
        if self.needles.iter().any(|n| n.finder.find(tail).is_some()) {
            sink.invalid(tail)
        } else {
            sink.keep(tail)
        }
    }

    /// What was read so far.
    pub fn tally(&self) -> &Tally {
        &self.tally
    }

    /// What was read.
    pub fn into_tally(self) -> Tally {
        self.tally
    }
}

enum Verdict {
    Match(Record),
    Other,
    Invalid,
}

/// Parses a candidate line and decides whether it is a record of one of `needles`.
fn judge(line: &[u8], needles: &[Needle]) -> Verdict {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(line)
    else {
        return Verdict::Invalid;
    };
    let (Some(client), Some(epoch)) = (
        map.get("client").and_then(|v| v.as_str()),
        map.get("epoch").and_then(|v| v.as_str()),
    ) else {
        return Verdict::Invalid;
    };
    let epoch = epoch.parse::<Epoch>().ok();
    let hit = needles
        .iter()
        .any(|n| n.pseudonym.as_str() == client && n.epoch.is_none_or(|want| epoch == Some(want)));
    if !hit {
        return Verdict::Other;
    }
    Verdict::Match(Record {
        ts: map.get("ts").and_then(|v| v.as_str()).map(str::to_owned),
        status: map.get("status").and_then(|v| v.as_u64()),
        path: map.get("path").and_then(|v| v.as_str()).map(str::to_owned),
        unknown_fields: map
            .keys()
            .any(|k| !crate::privacy::observation::FIELDS.contains(&k.as_str())),
    })
}

/// A byte source read in large chunks, handed out as regions of whole lines.
struct Lines<R> {
    src: R,
    buf: Vec<u8>,
    /// Valid bytes in `buf`.
    len: usize,
    /// Bytes of `buf` already handed out; the rest is an incomplete line.
    consumed: usize,
    /// Whether the byte before `buf[0]` was a newline (or the start of the file).
    at_line_start: bool,
}

impl<R: Read> Lines<R> {
    fn new(src: R, chunk: usize) -> Lines<R> {
        Lines {
            src,
            buf: vec![0; chunk.max(1)],
            len: 0,
            consumed: 0,
            at_line_start: true,
        }
    }

    /// The next region of whole lines (ending with a newline), or `None` at the end of the
    /// file for now; the incomplete last line stays in [`Lines::tail`]. Calling again after
    /// `None` reads what was appended since.
    fn next_region(&mut self) -> io::Result<Option<Range<usize>>> {
        if self.consumed > 0 {
            self.at_line_start = self.buf[self.consumed - 1] == b'\n';
            self.buf.copy_within(self.consumed..self.len, 0);
            self.len -= self.consumed;
            self.consumed = 0;
        }
        loop {
            if self.len == self.buf.len() {
                // One line longer than the buffer: grow rather than cut it.
                let bigger = self.buf.len() * 2;
                self.buf.resize(bigger, 0);
            }
            let n = match self.src.read(&mut self.buf[self.len..]) {
                Ok(0) => return Ok(None),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let old = self.len;
            self.len += n;
            if let Some(p) = memchr::memrchr(b'\n', &self.buf[old..self.len]) {
                self.consumed = old + p + 1;
                return Ok(Some(0..self.consumed));
            }
        }
    }

    fn region(&self, r: Range<usize>) -> &[u8] {
        &self.buf[r]
    }

    /// The incomplete last line (after `next_region` returned `None`).
    fn tail(&self) -> &[u8] {
        &self.buf[self.consumed..self.len]
    }
}

/// Empty lines in `region` (whole lines), given whether it starts at a line start.
fn count_blank(region: &[u8], at_line_start: bool) -> u64 {
    let mut n = 0;
    let mut i = 0;
    if at_line_start {
        while i < region.len() && region[i] == b'\n' {
            n += 1;
            i += 1;
        }
    }
    while let Some(p) = memmem::find(&region[i..], b"\n\n") {
        let mut j = i + p + 1;
        while j < region.len() && region[j] == b'\n' {
            n += 1;
            j += 1;
        }
        i = j;
    }
    n
}

/// The lines of `region` holding one of the needles, as `(start, end)` without the newline,
/// in order, each once.
fn candidates(region: &[u8], needles: &[Needle], out: &mut Vec<(usize, usize)>) {
    out.clear();
    for needle in needles {
        for pos in needle.finder.find_iter(region) {
            let start = memchr::memrchr(b'\n', &region[..pos]).map_or(0, |i| i + 1);
            let end = memchr::memchr(b'\n', &region[pos..]).map_or(region.len(), |i| pos + i);
            out.push((start, end));
        }
    }
    if needles.len() > 1 {
        out.sort_unstable();
    }
    out.dedup();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(s: &str) -> Epoch {
        s.parse().unwrap()
    }

    #[test]
    fn blank_lines_are_counted() {
        // (region, at line start, blank lines)
        let cases: &[(&[u8], bool, u64)] = &[
            (b"a\nb\n", true, 0),
            (b"\n", true, 1),
            (b"\n", false, 0),
            (b"\n\na\n", true, 2),
            (b"a\n\nb\n\n\n", true, 3),
            (b"a\n\n\n\nb\n", false, 3),
        ];
        for &(region, start, want) in cases {
            assert_eq!(count_blank(region, start), want, "{region:?}");
        }
    }

    fn needle(p: &str, e: Option<&str>) -> Needle {
        Needle::new(p.parse().unwrap(), e.map(ep))
    }

    struct Collect(Vec<u8>, Vec<String>);
    impl Sink for Collect {
        fn keep(&mut self, b: &[u8]) -> io::Result<()> {
            self.0.extend_from_slice(b);
            Ok(())
        }
        fn matched(&mut self, l: &[u8], _: &Record) -> io::Result<()> {
            self.1.push(String::from_utf8_lossy(l).into_owned());
            Ok(())
        }
        fn invalid(&mut self, _: &[u8]) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_reader_splits_matches_from_the_rest_across_small_chunks() {
        let a = "AAAAAAAAAAAAAAAA";
        let b = "BBBBBBBBBBBBBBBB";
        let rec = |c: &str, e: &str, extra: &str| {
            format!(
                "{{\"ts\":\"{e}T00:00:01Z\",\"epoch\":\"{e}\",\"client\":\"{c}\",\"path\":\"/x\",\"status\":200{extra}}}\n"
            )
        };
        let text = [
            rec(a, "2026-11-02", ""),
            rec(b, "2026-11-02", ""),
            "\n".to_owned(),
            rec(a, "2026-11-01", ",\"extra\":1"),
            // Right pseudonym, wrong epoch: not the client.
            rec(a, "2026-10-30", ""),
            format!("{{\"client\":\"{a}\", junk\n"),
            "junk without the pseudonym\n".to_owned(),
            rec(b, "2026-11-02", ""),
            format!("{{\"ts\":\"2026-11-02T00:00:09Z\",\"client\":\"{a}"),
        ]
        .concat();
        let needles = [needle(a, Some("2026-11-02")), needle(a, Some("2026-11-01"))];
        for chunk in [7, 64, CHUNK] {
            let mut reader = DayReader::with_chunk(text.as_bytes(), &needles, chunk);
            let mut sink = Collect(Vec::new(), Vec::new());
            reader.read_available(&mut sink).unwrap();
            reader.finish(&mut Discard).unwrap();
            let summary = reader.into_tally();
            assert_eq!(summary.records, 2, "chunk {chunk}");
            assert_eq!(sink.1.len(), 2);
            assert!(sink.1[1].contains("\"extra\""));
            let kept = String::from_utf8(sink.0).unwrap();
            assert_eq!(
                kept,
                [
                    rec(b, "2026-11-02", ""),
                    "\n".to_owned(),
                    rec(a, "2026-10-30", ""),
                    "junk without the pseudonym\n".to_owned(),
                    rec(b, "2026-11-02", ""),
                ]
                .concat(),
                "chunk {chunk}"
            );
            assert_eq!(
                summary.skipped,
                Skipped {
                    torn: 1,
                    blank: 1,
                    invalid: 1,
                    unknown_fields: 1
                },
                "chunk {chunk}"
            );
        }
    }

    /// Property-based fuzzing of the day-file reader (issue 12 §6; the long run is
    /// `scripts/fuzz-long.sh`): any bytes, read in any chunks and in reads of any size, never
    /// panic; every line holding the pseudonym is judged as the module doc says; and the lines
    /// that are not the client's reach the sink byte for byte, so erase loses nothing else.
    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        const A: &str = "AAAAAAAAAAAAAAAA";
        const B: &str = "BBBBBBBBBBBBBBBB";
        const DAY: &str = "2026-11-02";
        const DAY_BEFORE: &str = "2026-11-01";

        fn config() -> ProptestConfig {
            let cases = std::env::var("PROPTEST_CASES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(512);
            ProptestConfig {
                cases,
                failure_persistence: None,
                ..ProptestConfig::default()
            }
        }

        /// Hands out at most the next of `sizes` bytes per read; a size of 0 is an interrupted
        /// read.
        struct Trickle<'a> {
            data: &'a [u8],
            sizes: Vec<usize>,
            at: usize,
        }

        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let size = self.sizes[self.at % self.sizes.len()];
                self.at += 1;
                if size == 0 {
                    return Err(io::ErrorKind::Interrupted.into());
                }
                let n = size.min(buf.len()).min(self.data.len());
                buf[..n].copy_from_slice(&self.data[..n]);
                self.data = &self.data[n..];
                Ok(n)
            }
        }

        /// What the sink received, in order: (0 keep, 1 matched, 2 invalid, bytes).
        #[derive(Default)]
        struct Tape(Vec<(u8, Vec<u8>)>);

        impl Sink for Tape {
            fn keep(&mut self, b: &[u8]) -> io::Result<()> {
                if !b.is_empty() {
                    self.0.push((0, b.to_vec()));
                }
                Ok(())
            }
            fn matched(&mut self, l: &[u8], _: &Record) -> io::Result<()> {
                self.0.push((1, l.to_vec()));
                Ok(())
            }
            fn invalid(&mut self, l: &[u8]) -> io::Result<()> {
                self.0.push((2, l.to_vec()));
                Ok(())
            }
        }

        fn line() -> impl Strategy<Value = Vec<u8>> {
            let record = (
                prop::sample::select(vec![A, B]),
                prop::sample::select(vec![DAY, DAY_BEFORE, "2026-10-30", "2026-13-01", "x"]),
                prop::sample::select(vec![
                    "",
                    ",\"extra\":1",
                    ",\"path\":\"/a\"",
                    ",\"status\":404",
                ]),
            )
                .prop_map(|(c, e, extra)| {
                    format!(
                        "{{\"ts\":\"{e}T00:00:01Z\",\"epoch\":\"{e}\",\"client\":\"{c}\"{extra}}}"
                    )
                    .into_bytes()
                });
            let junk = prop::sample::select(vec![
                format!("{{\"client\":\"{A}\", junk"),
                format!("[\"{A}\"]"),
                format!("{{\"client\":\"{A}\",\"epoch\":5}}"),
                format!("{{\"epoch\":\"{DAY}\",\"client\":\"{B}\",\"path\":\"{A}\"}}"),
                format!("{{\"client\":\"{A}\",\"client\":\"{A}\",\"epoch\":\"{DAY}\"}}"),
                format!("\"{A}\" \"{A}\""),
                format!("{}\"{A}\"", "x".repeat(300)),
                String::new(),
                "\r".to_owned(),
            ])
            .prop_map(String::into_bytes);
            let bytes = prop::collection::vec(any::<u8>(), 0..40).prop_map(|mut v| {
                v.retain(|&b| b != b'\n');
                v
            });
            prop_oneof![3 => record, 2 => junk, 1 => bytes]
        }

        fn contains(hay: &[u8], needle: &[u8]) -> bool {
            hay.windows(needle.len()).any(|w| w == needle)
        }

        /// What the module doc says of one complete line: 1 matched, 2 invalid, 0 kept.
        fn model(line: &[u8], epochs: &[Option<&str>]) -> u8 {
            if !contains(line, format!("\"{A}\"").as_bytes()) {
                return 0;
            }
            let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(line) else {
                return 2;
            };
            let (Some(client), Some(epoch)) = (
                map.get("client").and_then(|v| v.as_str()),
                map.get("epoch").and_then(|v| v.as_str()),
            ) else {
                return 2;
            };
            let epoch_ok = epochs.iter().any(|want| {
                want.is_none_or(|w| epoch.parse::<Epoch>().ok() == w.parse::<Epoch>().ok())
            });
            u8::from(client == A && epoch_ok)
        }

        proptest! {
            #![proptest_config(config())]

            #[test]
            fn the_reader_judges_every_line_and_keeps_every_other_byte(
                lines in prop::collection::vec(line(), 0..12),
                torn in proptest::option::of(line()),
                any_epoch in any::<bool>(),
                chunk in prop::sample::select(vec![1usize, 2, 3, 7, 16, 64, 4096]),
                sizes in prop::collection::vec(0usize..80, 1..4).prop_map(|mut v| {
                    v.push(1);
                    v
                }),
            ) {
                let mut text = Vec::new();
                for l in &lines {
                    text.extend_from_slice(l);
                    text.push(b'\n');
                }
                let tail = torn.unwrap_or_default();
                text.extend_from_slice(&tail);
                let epochs: Vec<Option<&str>> = if any_epoch {
                    vec![None]
                } else {
                    vec![Some(DAY), Some(DAY_BEFORE)]
                };
                let needles: Vec<Needle> = epochs
                    .iter()
                    .map(|e| Needle::new(A.parse().unwrap(), e.map(|e| e.parse().unwrap())))
                    .collect();
                let mut reader =
                    DayReader::with_chunk(Trickle { data: &text, sizes, at: 0 }, &needles, chunk);
                let mut tape = Tape::default();
                reader.read_available(&mut tape).unwrap();
                reader.finish(&mut tape).unwrap();
                let summary = reader.into_tally();

                // Byte for byte: nothing lost, nothing added, nothing reordered.
                let mut replay = Vec::new();
                for (kind, bytes) in &tape.0 {
                    replay.extend_from_slice(bytes);
                    if *kind == 1 {
                        replay.push(b'\n');
                    }
                }
                prop_assert_eq!(String::from_utf8_lossy(&replay), String::from_utf8_lossy(&text));

                // Each line judged as the module doc says.
                let mut want: Vec<(u8, Vec<u8>)> = Vec::new();
                let (mut blank, mut unknown) = (0, 0);
                for l in &lines {
                    let kind = model(l, &epochs);
                    blank += u64::from(l.is_empty());
                    if kind == 1 {
                        let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(l) else {
                            unreachable!()
                        };
                        unknown += u64::from(map.keys().any(|k| !crate::privacy::observation::FIELDS.contains(&k.as_str())));
                    }
                    let mut with_nl = l.clone();
                    if kind == 2 {
                        with_nl.push(b'\n');
                    }
                    want.push((kind, if kind == 0 { Vec::new() } else { with_nl }));
                }
                let judged: Vec<&(u8, Vec<u8>)> = tape.0.iter().filter(|(k, _)| *k != 0).collect();
                let expected: Vec<&(u8, Vec<u8>)> = want.iter().filter(|(k, _)| *k != 0).collect();
                let tail_invalid = !tail.is_empty() && contains(&tail, format!("\"{A}\"").as_bytes());
                let judged_lines = &judged[..judged.len() - usize::from(tail_invalid)];
                prop_assert_eq!(judged_lines, &expected[..]);
                prop_assert_eq!(summary.records, want.iter().filter(|(k, _)| *k == 1).count() as u64);
                prop_assert_eq!(
                    summary.skipped,
                    Skipped {
                        torn: u64::from(!tail.is_empty()),
                        blank,
                        invalid: want.iter().filter(|(k, _)| *k == 2).count() as u64,
                        unknown_fields: unknown,
                    }
                );
            }

            #[test]
            fn blank_lines_are_counted_in_any_region(
                text in prop::collection::vec(prop::sample::select(vec![b'\n', b'\n', b'a']), 0..40),
                at_line_start in any::<bool>(),
            ) {
                // Only whole lines are handed out.
                let end = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                let region = &text[..end];
                let mut want = 0;
                let mut previous_newline = at_line_start;
                for &b in region {
                    want += u64::from(b == b'\n' && previous_newline);
                    previous_newline = b == b'\n';
                }
                prop_assert_eq!(count_blank(region, at_line_start), want);
            }
        }
    }
}
