//! What one sender may make the agent do through the marker socket.
//!
//! The socket is open to every local user (mode 0666 by default), and the agent runs as root,
//! so every shared resource a marker can consume is budgeted per *owner*: the sender's uid,
//! which the kernel gives with each datagram (`SCM_CREDENTIALS`), and its cgroup when the
//! agent's process table knows it. A budget per pid would not do: any user can start as many
//! processes as they like, and a container with its own user namespace can use many uids, but
//! stays in one cgroup.
//!
//! - [`RateLimiter`]: a token bucket per uid and per cgroup, in bounded tables. A full table
//!   forgets buckets that have refilled (forgetting them grants nothing: a new bucket starts
//!   full), and while none has, newcomers share one overflow bucket. The table is never
//!   cleared, which would hand every sender a fresh burst.
//! - [`Shares`]: how many entries of one shared table (task names, open jobs, processes with
//!   open jobs, per-thread slots) each owner holds; a uid at its [`fair_share`] is refused.
//!
//! A cgroup (a container, a service, a login session) gets [`CGROUP_MULTIPLE`] times a uid's
//! budget: one uid alone can never spend its cgroup's and shut other uids of that cgroup out
//! (root's processes in a user's login session, say), while a container sending as many uids
//! as its user namespace maps is held to two uids' worth.

use std::collections::HashMap;

use serde::Serialize;

/// Who sent a marker, as the kernel and the agent's process table say.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Principal {
    pub uid: u32,
    /// The sender's cgroup (v2 id) when the process table has it from the kernel.
    pub cgroup: Option<u64>,
}

impl Principal {
    pub fn uid(uid: u32) -> Self {
        Self { uid, cgroup: None }
    }

    fn owners(self) -> impl Iterator<Item = Owner> {
        std::iter::once(Owner::Uid(self.uid)).chain(self.cgroup.map(Owner::Cgroup))
    }
}

/// What a budget is kept for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Owner {
    Uid(u32),
    Cgroup(u64),
}

/// Which of a principal's budgets ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Over {
    Uid,
    Cgroup,
}

impl Over {
    pub const ALL: [Self; 2] = [Self::Uid, Self::Cgroup];

    pub fn label(self) -> &'static str {
        match self {
            Self::Uid => "uid",
            Self::Cgroup => "cgroup",
        }
    }

    fn of(owner: Owner) -> Self {
        match owner {
            Owner::Uid(_) => Self::Uid,
            Owner::Cgroup(_) => Self::Cgroup,
        }
    }
}

/// One uid may hold at most a quarter of a shared table: a single user leaves three quarters
/// to the others, and four are needed to fill it.
pub const SHARE_DIVISOR: usize = 4;

/// A cgroup's budget, in uid budgets (see the module's documentation).
pub const CGROUP_MULTIPLE: usize = 2;

/// The most entries of a table of `total` one owner may hold: a quarter, but at least
/// `floor`, so that a small table (`--max-tasks 10`) still serves a single user whole.
pub fn fair_share(total: usize, floor: usize) -> usize {
    (total / SHARE_DIVISOR).max(floor).min(total).max(1)
}

/// Entries of one shared table held per owner. Its size follows the table's: an owner is
/// forgotten when it holds nothing, and each entry counts for at most two owners.
#[derive(Clone, Debug)]
pub struct Shares {
    share: usize,
    cgroup_share: usize,
    held: HashMap<Owner, usize>,
}

impl Shares {
    /// For a table of `total` entries: each uid gets [`fair_share`]`(total, floor)`, each
    /// cgroup twice that (at most the table).
    pub fn new(total: usize, floor: usize) -> Self {
        let share = fair_share(total, floor);
        Self {
            share,
            cgroup_share: (share * CGROUP_MULTIPLE).min(total).max(share),
            held: HashMap::new(),
        }
    }

    /// A uid's share.
    pub fn share(&self) -> usize {
        self.share
    }

    fn limit(&self, owner: Owner) -> usize {
        match owner {
            Owner::Uid(_) => self.share,
            Owner::Cgroup(_) => self.cgroup_share,
        }
    }

    /// Whether `who` may take one more entry: `Err` names the budget that is spent.
    pub fn check(&self, who: Principal) -> Result<(), Over> {
        match who.owners().find(|o| self.held(*o) >= self.limit(*o)) {
            Some(o) => Err(Over::of(o)),
            None => Ok(()),
        }
    }

    /// Takes one entry for `who` if its share allows.
    pub fn take(&mut self, who: Principal) -> Result<(), Over> {
        self.check(who)?;
        for o in who.owners() {
            *self.held.entry(o).or_insert(0) += 1;
        }
        Ok(())
    }

    /// Gives back one entry taken by `who`.
    pub fn give_back(&mut self, who: Principal) {
        for o in who.owners() {
            if let Some(n) = self.held.get_mut(&o) {
                *n -= 1;
                if *n == 0 {
                    self.held.remove(&o);
                }
            }
        }
    }

    pub fn held(&self, owner: Owner) -> usize {
        self.held.get(&owner).copied().unwrap_or(0)
    }

    /// Owners holding something (for tests and bounds).
    pub fn owners(&self) -> usize {
        self.held.len()
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Markers per second, on average...
    pub per_sec: f64,
    /// ...and in a burst.
    pub burst: f64,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at_ns: u64,
}

impl Bucket {
    fn full(rate: Rate, now_ns: u64) -> Self {
        Self {
            tokens: rate.burst,
            at_ns: now_ns,
        }
    }

    fn refill(&mut self, rate: Rate, now_ns: u64) {
        let elapsed = now_ns.saturating_sub(self.at_ns) as f64 / 1e9;
        self.tokens = (self.tokens + elapsed * rate.per_sec).min(rate.burst);
        self.at_ns = self.at_ns.max(now_ns);
    }

    fn take(&mut self, rate: Rate, now_ns: u64) -> bool {
        self.refill(rate, now_ns);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether it would be full now: then it holds nothing a fresh bucket would not.
    fn refilled(&self, rate: Rate, now_ns: u64) -> bool {
        let mut b = *self;
        b.refill(rate, now_ns);
        b.tokens >= rate.burst
    }
}

/// Token buckets by key, at most `max_keys` of them, plus one shared by keys beyond that.
#[derive(Debug)]
struct Buckets<K> {
    max_keys: usize,
    buckets: HashMap<K, Bucket>,
    overflow: Bucket,
    /// When refilled buckets were last forgotten: at most once a second, so a stream of
    /// newcomers to a full table costs one scan a second, not one per datagram.
    swept_ns: u64,
}

const SWEEP_EVERY_NS: u64 = 1_000_000_000;

impl<K: std::hash::Hash + Eq + Copy> Buckets<K> {
    fn new(max_keys: usize, rate: Rate) -> Self {
        Self {
            max_keys,
            buckets: HashMap::new(),
            overflow: Bucket::full(rate, 0),
            swept_ns: 0,
        }
    }

    fn take(&mut self, key: K, rate: Rate, now_ns: u64) -> bool {
        if !self.buckets.contains_key(&key)
            && self.buckets.len() >= self.max_keys
            && now_ns.saturating_sub(self.swept_ns) >= SWEEP_EVERY_NS
        {
            self.swept_ns = now_ns;
            self.buckets.retain(|_, b| !b.refilled(rate, now_ns));
        }
        let bucket = if let Some(b) = self.buckets.get_mut(&key) {
            b
        } else if self.buckets.len() < self.max_keys {
            self.buckets
                .entry(key)
                .or_insert(Bucket::full(rate, now_ns))
        } else {
            &mut self.overflow
        };
        bucket.take(rate, now_ns)
    }
}

/// Uids and cgroups with a bucket of their own; beyond, they share one per kind. Every local
/// uid fits; only user namespaces (65,536 uids a container) or many cgroups reach it.
pub const MAX_RATE_KEYS: usize = 1024;

/// The marker rate budget per uid (`rate`) and per cgroup ([`CGROUP_MULTIPLE`] times it).
#[derive(Debug)]
pub struct RateLimiter {
    rate: Rate,
    cgroup_rate: Rate,
    uids: Buckets<u32>,
    cgroups: Buckets<u64>,
}

impl RateLimiter {
    pub fn new(rate: Rate) -> Self {
        Self::with_capacity(rate, MAX_RATE_KEYS)
    }

    pub fn with_capacity(rate: Rate, max_keys: usize) -> Self {
        let times = CGROUP_MULTIPLE as f64;
        let cgroup_rate = Rate {
            per_sec: rate.per_sec * times,
            burst: rate.burst * times,
        };
        Self {
            rate,
            cgroup_rate,
            uids: Buckets::new(max_keys, rate),
            cgroups: Buckets::new(max_keys, cgroup_rate),
        }
    }

    /// One token from the uid's bucket: checked first, before anything else is read.
    pub fn take_uid(&mut self, uid: u32, now_ns: u64) -> bool {
        self.uids.take(uid, self.rate, now_ns)
    }

    /// One token from the cgroup's bucket.
    pub fn take_cgroup(&mut self, cgroup: u64, now_ns: u64) -> bool {
        self.cgroups.take(cgroup, self.cgroup_rate, now_ns)
    }

    /// Uids with a bucket of their own.
    pub fn uids_tracked(&self) -> usize {
        self.uids.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;
    const RATE: Rate = Rate {
        per_sec: 10.0,
        burst: 20.0,
    };

    fn taken(r: &mut RateLimiter, uid: u32, n: usize, now: u64) -> usize {
        (0..n).filter(|_| r.take_uid(uid, now)).count()
    }

    #[test]
    fn a_uid_gets_its_burst_then_its_rate_whatever_its_pids() {
        let mut r = RateLimiter::new(RATE);
        // However many processes send, the uid has one bucket.
        assert_eq!(taken(&mut r, 1000, 100, SEC), 20);
        assert_eq!(taken(&mut r, 1000, 100, SEC), 0);
        // Half a second later: five more.
        assert_eq!(taken(&mut r, 1000, 100, SEC + SEC / 2), 5);
        // Another uid is untouched by the first one's flood.
        assert_eq!(taken(&mut r, 0, 100, SEC + SEC / 2), 20);
        // Never more than the burst, however long the pause.
        assert_eq!(taken(&mut r, 1000, 100, 1000 * SEC), 20);
    }

    #[test]
    fn a_full_table_shares_one_overflow_bucket_and_is_never_cleared() {
        let mut r = RateLimiter::with_capacity(RATE, 4);
        for uid in 0..4 {
            assert_eq!(taken(&mut r, uid, 15, SEC), 15);
        }
        // Newcomers share one bucket: 20 among all of them, however many uids they use.
        let overflow: usize = (100..200).map(|uid| taken(&mut r, uid, 5, SEC)).sum();
        assert_eq!(overflow, 20);
        // The first uids kept their buckets (5 tokens left each): nobody got a fresh burst.
        for uid in 0..4 {
            assert_eq!(taken(&mut r, uid, 100, SEC), 5);
        }
        assert_eq!(r.uids_tracked(), 4);
    }

    #[test]
    fn refilled_buckets_give_their_place_up() {
        let mut r = RateLimiter::with_capacity(RATE, 2);
        assert_eq!(taken(&mut r, 1, 20, SEC), 20);
        assert_eq!(taken(&mut r, 2, 1, SEC), 1);
        // Half a second on, uid 2 is full again and gives its place to uid 3; uid 1, which
        // emptied its bucket, keeps it (5 tokens, not a fresh 20).
        assert_eq!(taken(&mut r, 3, 1, SEC + SEC / 2), 1);
        assert_eq!(taken(&mut r, 1, 100, SEC + SEC / 2), 5);
        // Full again, and swept less than a second ago: the next newcomer overflows.
        assert_eq!(taken(&mut r, 4, 100, SEC + SEC / 2), 20);
        assert_eq!(
            taken(&mut r, 5, 100, SEC + SEC / 2),
            0,
            "the overflow is shared"
        );
        assert_eq!(r.uids_tracked(), 2);
    }

    #[test]
    fn a_cgroup_holds_two_uids_worth_so_one_uid_cannot_spend_it() {
        let mut r = RateLimiter::new(RATE);
        // A user floods from a login session that root's processes share.
        let mut through = 0;
        for _ in 0..1000 {
            if r.take_uid(65534, SEC) && r.take_cgroup(77, SEC) {
                through += 1;
            }
        }
        assert_eq!(through, 20, "the uid's burst");
        // Root in the same cgroup still gets its own burst through.
        let root = (0..20)
            .filter(|_| r.take_uid(0, SEC) && r.take_cgroup(77, SEC))
            .count();
        assert_eq!(root, 20);
        // A container sending as many uids is held to the cgroup's 40 in all.
        let many = (1000..2000)
            .filter(|uid| r.take_uid(*uid, SEC) && r.take_cgroup(78, SEC))
            .count();
        assert_eq!(many, 40);
    }

    #[test]
    fn shares_stop_an_owner_at_its_share_and_come_back() {
        let mut s = Shares::new(200, 8);
        assert_eq!(s.share(), 50);
        let attacker = Principal {
            uid: 65534,
            cgroup: Some(9),
        };
        for _ in 0..50 {
            s.take(attacker).unwrap();
        }
        assert_eq!(s.take(attacker), Err(Over::Uid));
        // Root in the same cgroup (a login session) still has room.
        let root_here = Principal {
            uid: 0,
            cgroup: Some(9),
        };
        assert_eq!(s.take(root_here), Ok(()));
        // Uids of one container (its own user namespace) are held to the cgroup's 100.
        let taken = (100_000..100_100)
            .filter(|uid| {
                s.take(Principal {
                    uid: *uid,
                    cgroup: Some(9),
                })
                .is_ok()
            })
            .count();
        assert_eq!(taken, 49);
        let sibling = Principal {
            uid: 100_000,
            cgroup: Some(9),
        };
        assert_eq!(s.take(sibling), Err(Over::Cgroup));
        // Others are untouched.
        let root = Principal::uid(0);
        assert_eq!(s.take(root), Ok(()));
        s.give_back(attacker);
        assert_eq!(s.held(Owner::Uid(65534)), 49);
        assert_eq!(s.take(sibling), Ok(()));
        for _ in 0..49 {
            s.give_back(attacker);
        }
        s.give_back(sibling);
        s.give_back(root_here);
        for uid in 100_000..100_049 {
            s.give_back(Principal {
                uid,
                cgroup: Some(9),
            });
        }
        s.give_back(root);
        assert_eq!(s.owners(), 0, "owners holding nothing are forgotten");
    }

    #[test]
    fn fair_shares_have_a_floor_and_never_exceed_the_table() {
        assert_eq!(fair_share(200, 8), 50);
        assert_eq!(fair_share(8192, 64), 2048);
        assert_eq!(fair_share(20, 8), 8);
        assert_eq!(fair_share(5, 8), 5);
        assert_eq!(fair_share(0, 8), 1);
    }
}
