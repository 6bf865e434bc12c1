//! The workers of one plugin telling each other that a key left CLOSED.
//!
//! A CLOSED request reads no shared data: each worker remembers which of its keys it last saw
//! CLOSED ([`crate::engine::KeyLocal::closed_epoch`]) and trusts that until its cache epoch moves
//! on. The epoch moves on at every tick (so an idle key's next request, and every flush, reads the
//! state again at least every [`crate::engine::FLUSH_MS`]) and whenever another worker says that
//! it tripped a key. That message is what keeps SPEC's rule that a transition is seen by every
//! worker on its next request: without it a worker would let an OPEN key's requests through until
//! its next tick.
//!
//! ## One queue per worker
//!
//! proxy-wasm's shared queues are keyed by VM id and name, and registering a name again moves
//! its notifications to the new registrant, so the workers (one VM each, one VM id) cannot share
//! one queue: each registers its own, `…/peer/<i>`. The index `i` is claimed at configure time in
//! the entry `…/peers` (how many indexes exist, a compare-and-swap counter), and each worker
//! writes a heartbeat (`<ms>|<owner>`) to `…/peer/<i>` every second. A new VM takes over an index
//! whose heartbeat is [`STALE_MS`] old (its VM was replaced by a reload) before adding one, so the
//! indexes do not grow with reloads, and a sender skips stale indexes, so no messages pile up in
//! the queue of a VM that is gone. A worker that finds another owner on its index (two VMs took
//! it over at once, or a clock step made it look stale) claims a new one.
//!
//! A worker whose queue could not be registered never trusts its cache: it reads the state on
//! every request, as before.

use std::fmt::Write as _;

use crate::host::Host;
use crate::shared::{cas_update, create_if_absent, Names, Update};

/// A heartbeat this old means the index's VM is gone.
pub const STALE_MS: u64 = 5_000;
/// How often a worker writes its heartbeat.
pub const HEARTBEAT_MS: u64 = 1_000;
/// Items drained from this worker's queue per notification, at most.
const DRAIN_MAX: usize = 1_024;

/// This worker's place among its plugin's workers.
#[derive(Debug, Default)]
pub struct Peers {
    /// This worker's index and its queue's token; `None`: no queue, so no cache.
    mine: Option<(u32, u32)>,
    /// What this VM writes into its heartbeat, to tell its index from a usurper's.
    owner: u64,
    heartbeat_ms: Option<u64>,
    /// Queue tokens of the other indexes, resolved on first use.
    tokens: Vec<Option<u32>>,
    /// Notifications sent and received (for tests and logs).
    pub sent: u64,
    pub received: u64,
}

fn heartbeat(now_ms: u64, owner: u64) -> Vec<u8> {
    format!("{now_ms}|{owner}").into_bytes()
}

/// `(ms, owner)` of a heartbeat entry.
fn parse_heartbeat(b: &[u8]) -> Option<(u64, u64)> {
    let s = std::str::from_utf8(b).ok()?;
    let (ms, owner) = s.split_once('|')?;
    Some((ms.parse().ok()?, owner.parse().ok()?))
}

fn fresh(hb_ms: u64, now_ms: u64) -> bool {
    // A heartbeat from the future (the clock stepped back) is fresh.
    now_ms.saturating_sub(hb_ms) < STALE_MS
}

impl Peers {
    /// Claims an index and registers its queue (call from the root context: it is the one
    /// Envoy notifies).
    pub fn join<H: Host>(host: &H, names: &Names, owner: u64, now_ms: u64) -> Peers {
        let mut p = Peers {
            owner,
            ..Peers::default()
        };
        p.claim(host, names, now_ms);
        p
    }

    /// Whether this worker hears of other workers' trips (and so may trust its cache).
    pub fn listening(&self) -> bool {
        self.mine.is_some()
    }

    /// This worker's queue token.
    pub fn token(&self) -> Option<u32> {
        self.mine.map(|(_, t)| t)
    }

    fn claim<H: Host>(&mut self, host: &H, names: &Names, now_ms: u64) {
        self.mine = None;
        let count_name = names.peers();
        create_if_absent(host, &count_name, b"0");
        let count = read_count(host, &count_name);
        let mut enc = Vec::new();
        let mut name = String::new();
        let mine = heartbeat(now_ms, self.owner);
        // A stale index first (its VM is gone), taken with compare-and-swap.
        let mut index = None;
        for i in 0..count {
            names.peer(i, &mut name);
            let taken = cas_update(
                host,
                &name,
                &mut enc,
                |b| Some(b.to_vec()),
                |v: &Vec<u8>, out: &mut Vec<u8>| {
                    out.clear();
                    out.extend_from_slice(v);
                },
                |v| match parse_heartbeat(v) {
                    Some((ms, _)) if fresh(ms, now_ms) => Update::Keep(false),
                    _ => {
                        *v = mine.clone();
                        Update::Write(true)
                    }
                },
                |_, _| false,
            );
            if taken {
                index = Some(i);
                break;
            }
        }
        let index = match index {
            Some(i) => i,
            None => {
                let Some(i) = cas_update(
                    host,
                    &count_name,
                    &mut enc,
                    |b| std::str::from_utf8(b).ok()?.parse::<u32>().ok(),
                    |n: &u32, out: &mut Vec<u8>| {
                        out.clear();
                        let _ = write!(Out(out), "{n}");
                    },
                    |n| {
                        let i = *n;
                        *n = n.saturating_add(1);
                        Update::Write(Some(i))
                    },
                    |_, _| None,
                ) else {
                    return;
                };
                names.peer(i, &mut name);
                if host.set_shared(&name, &mine, None).is_err() {
                    return;
                }
                i
            }
        };
        names.peer_queue(index, &mut name);
        if let Some(token) = host.register_queue(&name) {
            self.mine = Some((index, token));
            self.heartbeat_ms = Some(now_ms);
            // Whatever a previous owner of this index left unread.
            self.drain(host);
        }
    }

    /// Writes this worker's heartbeat once per [`HEARTBEAT_MS`]; claims a new index if another
    /// VM holds this one now.
    pub fn on_tick<H: Host>(&mut self, host: &H, names: &Names, now_ms: u64) {
        let Some((index, _)) = self.mine else {
            return;
        };
        let due = self.heartbeat_ms.is_none_or(|t| {
            now_ms.saturating_sub(t) >= HEARTBEAT_MS || t > now_ms.saturating_add(HEARTBEAT_MS)
        });
        if !due {
            return;
        }
        let mut name = String::new();
        names.peer(index, &mut name);
        let (value, cas) = host.get_shared(&name);
        let ours = value
            .as_deref()
            .and_then(parse_heartbeat)
            .is_some_and(|(_, o)| o == self.owner);
        if !ours {
            log::info!("meshbreaker: another VM took worker index {index}; claiming a new one");
            self.claim(host, names, now_ms);
            return;
        }
        if host
            .set_shared(&name, &heartbeat(now_ms, self.owner), cas)
            .is_ok()
        {
            self.heartbeat_ms = Some(now_ms);
        }
    }

    /// Tells every other live worker that a key of this plugin left CLOSED.
    pub fn notify<H: Host>(&mut self, host: &H, names: &Names, now_ms: u64) {
        let mine = self.mine.map(|(i, _)| i);
        let count = read_count(host, &names.peers());
        let mut name = String::new();
        for i in 0..count {
            if Some(i) == mine {
                continue;
            }
            names.peer(i, &mut name);
            let live = host
                .get_shared(&name)
                .0
                .as_deref()
                .and_then(parse_heartbeat)
                .is_some_and(|(ms, _)| fresh(ms, now_ms));
            if !live {
                continue;
            }
            let at = i as usize;
            if self.tokens.len() <= at {
                self.tokens.resize(at + 1, None);
            }
            let token = match self.tokens.get(at).copied().flatten() {
                Some(t) => Some(t),
                None => {
                    names.peer_queue(i, &mut name);
                    let t = host.resolve_queue(&name);
                    if let Some(slot) = self.tokens.get_mut(at) {
                        *slot = t;
                    }
                    t
                }
            };
            if let Some(t) = token {
                if host.enqueue(t, b"closed-left") {
                    self.sent += 1;
                } else if let Some(slot) = self.tokens.get_mut(at) {
                    // The queue is gone (its VM id's last VM went away): resolve it again.
                    *slot = None;
                }
            }
        }
    }

    /// Empties this worker's queue; true when it held anything.
    pub fn drain<H: Host>(&mut self, host: &H) -> bool {
        let Some((_, token)) = self.mine else {
            return false;
        };
        let mut any = false;
        for _ in 0..DRAIN_MAX {
            if host.dequeue(token).is_none() {
                break;
            }
            any = true;
            self.received += 1;
        }
        any
    }
}

fn read_count<H: Host>(host: &H, name: &str) -> u32 {
    host.get_shared(name)
        .0
        .and_then(|b| std::str::from_utf8(&b).ok()?.parse().ok())
        .unwrap_or(0)
        .min(4_096)
}

/// `fmt::Write` into a byte buffer.
struct Out<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Out<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}
