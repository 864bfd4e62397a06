//! Choosing the upstream server of one request (`upstream.balance`): round robin, least request
//! (Envoy's power of two choices over requests in flight) and smooth weighted round robin
//! (nginx). Only servers in rotation are chosen; when none is, every server is, so that a
//! request is never refused for want of a healthy server. Each policy passes over a server at
//! its connection cap with no idle connection for one with room (as nginx's `max_conns`); only
//! when every server in rotation is full is a full one chosen (the request waits in its queue).
//!
//! Owns the choice only: what is in rotation, what has room and what is in flight is read
//! through the closures it is given. Never blocks: the weighted choice holds its lock for a few
//! additions, never across an await; nothing here allocates or logs.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use crate::config::Balance;

/// The choice's state for one pool of `n` servers.
pub struct Balancer {
    kind: Balance,
    /// Round robin's turn.
    next: AtomicUsize,
    /// The least-request draw's counter, scrambled into random numbers ([`splitmix64`]).
    draw: AtomicU64,
    /// Each server's `weight`.
    weights: Box<[i64]>,
    /// Smooth weighted round robin's current weights.
    current: Mutex<Box<[i64]>>,
}

/// What the balancer reads of the servers, by index: whether each is in rotation, whether it
/// has an idle connection or room for a new one, and its requests in flight.
pub trait View {
    /// Whether server `i` may be chosen (health checks, outlier detection, connect back-off).
    fn in_rotation(&self, i: usize) -> bool;
    /// Whether server `i` has an idle connection or room to open one (a request sent there
    /// would not wait in its queue).
    fn has_room(&self, i: usize) -> bool;
    /// Requests in flight on server `i`.
    fn in_flight(&self, i: usize) -> usize;
}

impl Balancer {
    /// A balancer of `kind` over servers of these `weights` (one per server, at least one
    /// server; a weight matters only to [`Balance::Weighted`]).
    pub fn new(kind: Balance, weights: &[u32]) -> Balancer {
        let seed = getrandom::u64().unwrap_or(0x9e37_79b9_7f4a_7c15);
        Balancer {
            kind,
            next: AtomicUsize::new(0),
            draw: AtomicU64::new(seed),
            weights: weights.iter().map(|&w| i64::from(w.max(1))).collect(),
            current: Mutex::new(vec![0; weights.len()].into_boxed_slice()),
        }
    }

    /// The index of the server for the next request, below the number of servers.
    pub fn pick(&self, view: &impl View) -> usize {
        let n = self.weights.len().max(1);
        // Every server, when none is in rotation.
        let any = (0..n).any(|i| view.in_rotation(i));
        let up = |i: usize| !any || view.in_rotation(i);
        if self.kind == Balance::RoundRobin {
            // Round robin passes over full servers in its own walk.
            return self.round_robin(n, up, view);
        }
        // Full servers only when all are.
        let room = (0..n).any(|i| up(i) && view.has_room(i));
        let eligible = |i: usize| up(i) && (!room || view.has_room(i));
        match self.kind {
            Balance::LeastRequest => self.least_request(n, eligible, view),
            _ => self.weighted(n, eligible),
        }
    }

    /// The next server in turn that has room; else the next one in turn.
    fn round_robin(&self, n: usize, up: impl Fn(usize) -> bool, view: &impl View) -> usize {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut first_up = None;
        (0..n)
            .map(|i| (start.wrapping_add(i)) % n)
            .find(|&i| {
                if !up(i) {
                    return false;
                }
                first_up.get_or_insert(i);
                view.has_room(i)
            })
            .or(first_up)
            .unwrap_or(start % n)
    }

    /// Of two different servers drawn at random, the one with fewer requests in flight (the
    /// first drawn on a tie).
    fn least_request(&self, n: usize, up: impl Fn(usize) -> bool, view: &impl View) -> usize {
        let k = (0..n).filter(|&i| up(i)).count();
        let nth_up = |nth: usize| (0..n).filter(|&i| up(i)).nth(nth).unwrap_or(0);
        if k <= 1 {
            return nth_up(0);
        }
        let r = splitmix64(self.draw.fetch_add(1, Ordering::Relaxed));
        let k64 = k as u64;
        let a = (r % k64) as usize;
        // Another of the k: 1 to k - 1 places further, wrapping.
        let b = (a + 1 + ((r >> 32) % (k64 - 1)) as usize) % k;
        let (a, b) = (nth_up(a), nth_up(b));
        if view.in_flight(b) < view.in_flight(a) {
            b
        } else {
            a
        }
    }

    /// nginx's smooth weighted round robin: each server's current weight grows by its weight,
    /// the largest is chosen and loses the total. Over any run of `sum of weights` requests
    /// each server gets exactly its weight, spread out rather than in bursts.
    fn weighted(&self, n: usize, up: impl Fn(usize) -> bool) -> usize {
        // A few additions under the lock; nothing in it panics.
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let mut total = 0;
        let mut best: Option<usize> = None;
        for i in (0..n).filter(|&i| up(i)) {
            current[i] += self.weights[i];
            total += self.weights[i];
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        let best = best.unwrap_or(0);
        current[best] -= total;
        best
    }
}

/// SplitMix64's output function: a well-spread 64-bit number from a counter.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Servers as the balancer sees them: (in rotation, has room, in flight) each.
    struct Servers(Vec<(bool, bool, usize)>);

    impl View for Servers {
        fn in_rotation(&self, i: usize) -> bool {
            self.0[i].0
        }
        fn has_room(&self, i: usize) -> bool {
            self.0[i].1
        }
        fn in_flight(&self, i: usize) -> usize {
            self.0[i].2
        }
    }

    /// `count` picks, as a string of server letters ("abab").
    fn picks(b: &Balancer, servers: &Servers, count: usize) -> String {
        (0..count)
            .map(|_| char::from(b'a' + b.pick(servers) as u8))
            .collect()
    }

    /// Picks per server over `count` picks.
    fn shares(b: &Balancer, servers: &Servers, count: usize) -> Vec<usize> {
        let mut got = vec![0; servers.0.len()];
        for _ in 0..count {
            got[b.pick(servers)] += 1;
        }
        got
    }

    const UP: (bool, bool, usize) = (true, true, 0);
    const DOWN: (bool, bool, usize) = (false, true, 0);
    const FULL: (bool, bool, usize) = (true, false, 0);

    #[test]
    fn round_robin_takes_each_server_in_rotation_in_turn_preferring_one_with_room() {
        // (row, servers, the first six picks)
        let rows = [
            ("all up", vec![UP, UP, UP], "abcabc"),
            ("one server", vec![UP], "aaaaaa"),
            // The turn of a server out of rotation goes to the next one.
            ("the middle one down", vec![UP, DOWN, UP], "accacc"),
            ("all down: all used", vec![DOWN, DOWN], "abab ab"),
            ("one full, others with room", vec![FULL, UP, UP], "bbcbbc"),
            ("all full: in turn", vec![FULL, FULL], "ababab"),
            ("up but full beside down", vec![FULL, DOWN], "aaaaaa"),
        ];
        for (row, servers, want) in rows {
            let want = want.replace(' ', "");
            let b = Balancer::new(Balance::RoundRobin, &vec![1; servers.len()]);
            assert_eq!(picks(&b, &Servers(servers), want.len()), want, "{row}");
        }
    }

    #[test]
    fn least_request_never_picks_the_busiest_server_when_another_is_in_rotation() {
        // (row, servers, picks per server over 3000: exact, or None for "some")
        type Row = (&'static str, Vec<(bool, bool, usize)>, Vec<Option<usize>>);
        let rows: [Row; 8] = [
            (
                "two: always the idler",
                vec![(true, true, 5), (true, true, 0)],
                vec![Some(0), Some(3000)],
            ),
            (
                "three: the busiest never",
                vec![(true, true, 9), (true, true, 0), (true, true, 3)],
                vec![Some(0), None, None],
            ),
            (
                "the idle one down",
                vec![(true, true, 5), (false, true, 0), (true, true, 7)],
                vec![Some(3000), Some(0), Some(0)],
            ),
            ("one server", vec![(true, true, 5)], vec![Some(3000)]),
            (
                "all down: all used",
                vec![(false, true, 4), (false, true, 1)],
                vec![Some(0), Some(3000)],
            ),
            (
                "equal: both used",
                vec![(true, true, 2), (true, true, 2)],
                vec![None, None],
            ),
            (
                "the idle one full: passed over",
                vec![(true, false, 0), (true, true, 5)],
                vec![Some(0), Some(3000)],
            ),
            (
                "both full: the idler",
                vec![(true, false, 0), (true, false, 5)],
                vec![Some(3000), Some(0)],
            ),
        ];
        for (row, servers, want) in rows {
            let b = Balancer::new(Balance::LeastRequest, &vec![1; servers.len()]);
            let got = shares(&b, &Servers(servers), 3000);
            for (i, (&got, want)) in got.iter().zip(&want).enumerate() {
                match want {
                    Some(want) => assert_eq!(got, *want, "{row}: server {i}: {got:?}"),
                    None => assert!(got > 300, "{row}: server {i} got {got} of 3000"),
                }
            }
        }
    }

    #[test]
    fn least_request_draws_the_two_servers_evenly() {
        // All equally loaded: each of four servers is drawn first about a quarter of the time.
        let b = Balancer::new(Balance::LeastRequest, &[1; 4]);
        let got = shares(&b, &Servers(vec![UP; 4]), 40_000);
        for (i, n) in got.iter().enumerate() {
            assert!((9_000..11_000).contains(n), "server {i}: {n} of 40000");
        }
    }

    #[test]
    fn weighted_round_robin_gives_each_server_its_weight_smoothly() {
        // (row, weights, servers, picks)
        let rows = [
            // nginx's own example (ngx_http_upstream_round_robin.c): a a b a c a a.
            ("5:1:1", vec![5, 1, 1], vec![UP, UP, UP], "aabacaa"),
            ("3:1", vec![3, 1], vec![UP, UP], "aabaaaba"),
            ("1:1", vec![1, 1], vec![UP, UP], "abab"),
            ("equal thirds", vec![2, 2, 2], vec![UP, UP, UP], "abcabc"),
            (
                "the heavy one down",
                vec![5, 1, 1],
                vec![DOWN, UP, UP],
                "bcbc",
            ),
            ("a full one passed over", vec![3, 1], vec![FULL, UP], "bbbb"),
            (
                "all full: by weight",
                vec![2, 1],
                vec![FULL, FULL],
                "abaaba",
            ),
            (
                "full beside down: the full one",
                vec![2, 1],
                vec![FULL, DOWN],
                "aaaa",
            ),
            ("all down: all used", vec![2, 1], vec![DOWN, DOWN], "abaaba"),
        ];
        for (row, weights, servers, want) in rows {
            let b = Balancer::new(Balance::Weighted, &weights);
            assert_eq!(picks(&b, &Servers(servers), want.len()), want, "{row}");
        }
    }

    #[test]
    fn weighted_round_robin_is_exact_over_whole_rounds() {
        // (weights, rounds)
        let rows = [
            (vec![3, 1], 1000),
            (vec![1000, 1, 7], 3),
            (vec![2, 3, 5], 100),
        ];
        for (weights, rounds) in rows {
            let b = Balancer::new(Balance::Weighted, &weights);
            let total: u32 = weights.iter().sum();
            let servers = Servers(vec![UP; weights.len()]);
            let got = shares(&b, &servers, (total * rounds) as usize);
            let want: Vec<usize> = weights.iter().map(|w| (w * rounds) as usize).collect();
            assert_eq!(got, want, "{weights:?}");
        }
    }
}
