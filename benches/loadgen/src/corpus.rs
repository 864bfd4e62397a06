//! The request corpus: client addresses, user agents, Accept-Language values and paths, read
//! from the files `benches/edge/make_corpus.py` writes, and the picker that draws one request's
//! values from them. Without a corpus every request is the same `GET` of one path.

use std::fs;
use std::io;
use std::path::Path;

use http::HeaderValue;
use http::uri::PathAndQuery;

/// Values drawn with given integer weights: cumulative sums searched by bisection.
pub struct Weighted<T> {
    values: Vec<T>,
    cumulative: Vec<u64>,
}

impl<T> Weighted<T> {
    fn pick(&self, r: u64) -> &T {
        let total = self.cumulative.last().copied().unwrap_or(1);
        let x = r % total;
        let i = self.cumulative.partition_point(|&c| c <= x);
        &self.values[i.min(self.values.len() - 1)]
    }
}

/// One request's varying parts.
pub struct Pick<'a> {
    pub path: &'a PathAndQuery,
    pub client: Option<&'a HeaderValue>,
    pub user_agent: &'a HeaderValue,
    pub accept_language: Option<&'a HeaderValue>,
}

/// Everything a request is drawn from.
pub struct Corpus {
    paths: Vec<PathAndQuery>,
    clients: Vec<HeaderValue>,
    user_agents: Weighted<HeaderValue>,
    languages: Weighted<Option<HeaderValue>>,
}

fn bad(what: &str, file: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {what}", file.display()),
    )
}

fn lines(file: &Path) -> io::Result<Vec<String>> {
    let text = fs::read_to_string(file)?;
    Ok(text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect())
}

/// `weight<TAB>value` lines; an empty value is kept as `None` (the header is not sent).
fn weighted(file: &Path) -> io::Result<Weighted<Option<HeaderValue>>> {
    let mut values = Vec::new();
    let mut cumulative = Vec::new();
    let mut sum = 0u64;
    for line in lines(file)? {
        let (w, v) = line
            .split_once('\t')
            .ok_or_else(|| bad("a line without a tab", file))?;
        let w: u64 = w
            .parse()
            .map_err(|_| bad("a weight that is not a number", file))?;
        if w == 0 {
            continue;
        }
        let value = if v.is_empty() {
            None
        } else {
            Some(
                HeaderValue::from_str(v)
                    .map_err(|_| bad("a value that is no header value", file))?,
            )
        };
        sum += w;
        values.push(value);
        cumulative.push(sum);
    }
    if values.is_empty() {
        return Err(bad("no values", file));
    }
    Ok(Weighted { values, cumulative })
}

impl Corpus {
    /// A request that is the same every time: `path`, a fixed user agent, no other header.
    pub fn fixed(path: &str) -> io::Result<Corpus> {
        let path = PathAndQuery::try_from(path)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "--path is not a path"))?;
        Ok(Corpus {
            paths: vec![path],
            clients: Vec::new(),
            user_agents: Weighted {
                values: vec![HeaderValue::from_static("webprom-edge-loadgen")],
                cumulative: vec![1],
            },
            languages: Weighted {
                values: vec![None],
                cumulative: vec![1],
            },
        })
    }

    /// Reads `clients.txt`, `user-agents.tsv`, `languages.tsv` and `paths.txt` from `dir`.
    pub fn load(dir: &Path) -> io::Result<Corpus> {
        let clients_file = dir.join("clients.txt");
        let clients = lines(&clients_file)?
            .iter()
            .map(|l| HeaderValue::from_str(l).map_err(|_| bad("not a header value", &clients_file)))
            .collect::<io::Result<Vec<_>>>()?;
        let paths_file = dir.join("paths.txt");
        let paths = lines(&paths_file)?
            .into_iter()
            .map(|l| PathAndQuery::try_from(l).map_err(|_| bad("not a path", &paths_file)))
            .collect::<io::Result<Vec<_>>>()?;
        if paths.is_empty() || clients.is_empty() {
            return Err(bad("empty", dir));
        }
        let ua_file = dir.join("user-agents.tsv");
        let uas = weighted(&ua_file)?;
        let mut values = Vec::with_capacity(uas.values.len());
        for v in uas.values {
            values.push(v.ok_or_else(|| bad("an empty user agent", &ua_file))?);
        }
        Ok(Corpus {
            paths,
            clients,
            user_agents: Weighted {
                values,
                cumulative: uas.cumulative,
            },
            languages: weighted(&dir.join("languages.tsv"))?,
        })
    }

    /// Number of distinct client addresses (0: none sent).
    pub fn clients(&self) -> usize {
        self.clients.len()
    }

    /// Request number `n` of the run: the client addresses are walked in order (every address is
    /// used once per `clients()` requests), the rest is drawn from `rng`.
    pub fn pick(&self, n: u64, rng: &mut Rng) -> Pick<'_> {
        let client = if self.clients.is_empty() {
            None
        } else {
            Some(&self.clients[(n % self.clients.len() as u64) as usize])
        };
        let path = &self.paths[(rng.next() % self.paths.len() as u64) as usize];
        Pick {
            path,
            client,
            user_agent: self.user_agents.pick(rng.next()),
            accept_language: self.languages.pick(rng.next()).as_ref(),
        }
    }
}

/// wyrand: a small, fast generator; not for anything but picking benchmark inputs.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.0) * u128::from(self.0 ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    }
}
