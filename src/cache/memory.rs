//! The memory tier: moka, weighed in bytes (heads + bodies), so the total stays at or below
//! `cache.max_size`. One moka entry per URL holds its variants (at most [`MAX_VARIANTS`],
//! newest first); an update replaces the whole list under moka's per-key lock.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use http::HeaderMap;
use metrics::{Counter, Gauge};
use moka::notification::RemovalCause;
use moka::ops::compute::Op;

use super::entry::Entry;
use super::key;
use crate::metrics::{CACHE_BYTES, CACHE_ENTRIES, CACHE_EVICTIONS_TOTAL};

/// Most variants kept per URL; the oldest goes first.
pub const MAX_VARIANTS: usize = 16;

/// The stored variants of one URL.
#[derive(Debug, Default)]
pub struct Variants {
    /// Newest first.
    pub list: Vec<Arc<Entry>>,
}

/// What a lookup found.
pub enum Lookup {
    /// A variant that matches the request.
    Found(Arc<Entry>),
    /// Variants of the URL, none for this request's selecting fields.
    VaryMiss,
    /// Nothing for the URL.
    Miss,
}

/// The memory tier.
pub struct MemoryStore {
    cache: moka::sync::Cache<Arc<str>, Arc<Variants>>,
    /// Stored responses (variants), kept by insert and the removal listener.
    count: Arc<AtomicI64>,
    bytes: Gauge,
    entries: Gauge,
    evictions: Counter,
}

impl MemoryStore {
    /// A store of at most `max_size` bytes.
    pub fn new(max_size: u64) -> Self {
        let count = Arc::new(AtomicI64::new(0));
        let evictions: Counter = metrics::counter!(CACHE_EVICTIONS_TOTAL, "tier" => "memory");
        let c = Arc::clone(&count);
        let ev = evictions.clone();
        let cache = moka::sync::Cache::builder()
            .max_capacity(max_size)
            .weigher(|k: &Arc<str>, v: &Arc<Variants>| {
                let w: usize = k.len() + v.list.iter().map(|e| e.weight()).sum::<usize>();
                u32::try_from(w).unwrap_or(u32::MAX)
            })
            .eviction_listener(move |_k, v: Arc<Variants>, cause| {
                // A replaced list is accounted for by the insert that replaced it.
                if cause != RemovalCause::Replaced {
                    c.fetch_sub(v.list.len() as i64, Ordering::Relaxed);
                }
                if cause.was_evicted() {
                    ev.increment(v.list.len() as u64);
                }
            })
            .build();
        Self {
            cache,
            count,
            bytes: metrics::gauge!(CACHE_BYTES, "tier" => "memory"),
            entries: metrics::gauge!(CACHE_ENTRIES, "tier" => "memory"),
            evictions,
        }
    }

    /// The newest variant of `url` that matches the request's headers.
    pub fn get(&self, url: &str, req: &HeaderMap) -> Lookup {
        let Some(v) = self.cache.get(url) else {
            return Lookup::Miss;
        };
        match v.list.iter().find(|e| key::matches(req, &e.head.vary)) {
            Some(e) => Lookup::Found(Arc::clone(e)),
            None => Lookup::VaryMiss,
        }
    }

    /// Stores `entry`, replacing the variant with the same selecting fields.
    pub fn insert(&self, entry: Arc<Entry>) {
        let url = Arc::clone(&entry.head.key);
        let count = &self.count;
        self.cache.entry(url).and_compute_with(|old| {
            let mut list = Vec::with_capacity(MAX_VARIANTS);
            list.push(Arc::clone(&entry));
            let old_len = old.as_ref().map_or(0, |o| o.value().list.len());
            if let Some(old) = old {
                list.extend(
                    old.value()
                        .list
                        .iter()
                        .filter(|e| e.head.vary != entry.head.vary)
                        .take(MAX_VARIANTS - 1)
                        .cloned(),
                );
            }
            count.fetch_add(list.len() as i64 - old_len as i64, Ordering::Relaxed);
            Op::Put(Arc::new(Variants { list }))
        });
    }

    /// Removes the variants of `url` for which `drop` holds; returns how many.
    fn remove_where(&self, url: Arc<str>, drop: impl Fn(&Entry) -> bool) -> usize {
        let mut removed = 0;
        let count = &self.count;
        self.cache.entry(url).and_compute_with(|old| {
            let Some(old) = old else { return Op::Nop };
            let list: Vec<_> = old
                .value()
                .list
                .iter()
                .filter(|e| !drop(e))
                .cloned()
                .collect();
            removed = old.value().list.len() - list.len();
            if removed == 0 {
                Op::Nop
            } else if list.is_empty() {
                // The listener counts the whole removed list.
                Op::Remove
            } else {
                count.fetch_sub(removed as i64, Ordering::Relaxed);
                Op::Put(Arc::new(Variants { list }))
            }
        });
        removed
    }

    /// Removes the variant of `url` with these selecting fields.
    pub fn remove_variant(&self, entry: &Entry) {
        self.remove_where(Arc::clone(&entry.head.key), |e| {
            e.head.vary == entry.head.vary
        });
    }

    /// Removes every variant of `url`; returns how many.
    pub fn remove_url(&self, url: &str) -> usize {
        if !self.cache.contains_key(url) {
            return 0;
        }
        self.remove_where(url.into(), |_| true)
    }

    /// Removes every variant of every URL starting with `prefix`.
    pub fn remove_prefix(&self, prefix: &str) -> usize {
        let urls: Vec<Arc<str>> = self
            .cache
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| Arc::clone(&*k))
            .collect();
        urls.into_iter()
            .map(|u| self.remove_where(u, |_| true))
            .sum()
    }

    /// Removes every variant tagged with one of `tags`.
    pub fn remove_tags(&self, tags: &[String]) -> usize {
        let tagged = |e: &Entry| e.head.tags.iter().any(|t| tags.iter().any(|x| **t == **x));
        let urls: Vec<Arc<str>> = self
            .cache
            .iter()
            .filter(|(_, v)| v.list.iter().any(|e| tagged(e)))
            .map(|(k, _)| Arc::clone(&*k))
            .collect();
        urls.into_iter().map(|u| self.remove_where(u, tagged)).sum()
    }

    /// Removes everything.
    pub fn clear(&self) -> usize {
        let n = usize::try_from(self.count.load(Ordering::Relaxed)).unwrap_or(0);
        self.cache.invalidate_all();
        self.cache.run_pending_tasks();
        n
    }

    /// Stored responses now.
    pub fn len(&self) -> u64 {
        u64::try_from(self.count.load(Ordering::Relaxed)).unwrap_or(0)
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes stored now (after pending evictions).
    pub fn bytes(&self) -> u64 {
        self.cache.weighted_size()
    }

    /// Applies pending evictions and exports the size gauges.
    pub fn refresh_gauges(&self) {
        self.cache.run_pending_tasks();
        self.bytes.set(self.bytes() as f64);
        self.entries.set(self.len() as f64);
        self.evictions.increment(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::Head;
    use crate::cache::policy::Freshness;
    use bytes::Bytes;
    use http::{HeaderName, HeaderValue, StatusCode};

    fn entry(url: &str, lang: Option<&'static str>, body: usize, tag: &str) -> Arc<Entry> {
        let vary = lang
            .map(|l| {
                vec![(
                    HeaderName::from_static("accept-language"),
                    Some(Bytes::from(l)),
                )]
            })
            .unwrap_or_default();
        Arc::new(Entry {
            head: Arc::new(Head {
                key: url.into(),
                status: StatusCode::OK,
                headers: HeaderMap::new(),
                freshness: Freshness {
                    response_time: 0,
                    initial_age: 0,
                    lifetime: 60,
                    no_cache: false,
                    no_stale: false,
                    stale_while_revalidate: None,
                    stale_if_error: None,
                    validators: false,
                },
                vary,
                tags: vec![tag.into()],
            }),
            body: Bytes::from(vec![b'x'; body]),
        })
    }

    fn lang(l: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("accept-language", HeaderValue::from_static(l));
        h
    }

    #[test]
    fn variants_are_kept_apart_and_replaced_in_place() {
        let m = MemoryStore::new(1 << 20);
        m.insert(entry("http://a/x", Some("en"), 10, "t"));
        m.insert(entry("http://a/x", Some("de"), 20, "t"));
        m.insert(entry("http://a/x", Some("en"), 30, "t"));
        assert_eq!(m.len(), 2);
        match m.get("http://a/x", &lang("en")) {
            Lookup::Found(e) => assert_eq!(e.body.len(), 30, "the newer en variant"),
            _ => panic!("en variant"),
        }
        assert!(matches!(m.get("http://a/x", &lang("fr")), Lookup::VaryMiss));
        assert!(matches!(m.get("http://a/y", &lang("en")), Lookup::Miss));
    }

    #[test]
    fn at_most_sixteen_variants_per_url() {
        let m = MemoryStore::new(1 << 20);
        const LANGS: [&str; 20] = [
            "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p", "q",
            "r", "s", "t",
        ];
        for l in LANGS {
            m.insert(entry("http://a/x", Some(l), 1, "t"));
        }
        assert_eq!(m.len(), 16);
        assert!(matches!(m.get("http://a/x", &lang("a")), Lookup::VaryMiss));
        assert!(matches!(m.get("http://a/x", &lang("t")), Lookup::Found(_)));
    }

    #[test]
    fn purges_by_url_prefix_tag_and_all() {
        let m = MemoryStore::new(1 << 20);
        m.insert(entry("http://a/v1/x", Some("en"), 1, "red"));
        m.insert(entry("http://a/v1/x", Some("de"), 1, "blue"));
        m.insert(entry("http://a/v1/y", None, 1, "red"));
        m.insert(entry("http://a/v2/z", None, 1, "green"));
        m.insert(entry("http://b/v1/w", None, 1, "green"));
        assert_eq!(m.remove_tags(&["red".into()]), 2);
        assert!(matches!(
            m.get("http://a/v1/x", &lang("de")),
            Lookup::Found(_)
        ));
        assert_eq!(m.remove_prefix("http://a/v"), 2);
        assert_eq!(m.remove_url("http://b/v1/w"), 1);
        assert_eq!(m.remove_url("http://b/v1/w"), 0);
        assert_eq!(m.len(), 0);
        m.insert(entry("http://a/1", None, 1, "t"));
        m.insert(entry("http://a/2", None, 1, "t"));
        assert_eq!(m.clear(), 2);
        assert_eq!(m.len(), 0);
    }

    #[test]
    fn total_bytes_stay_within_the_capacity() {
        let m = MemoryStore::new(64 * 1024);
        for i in 0..200 {
            m.insert(entry(&format!("http://a/{i}"), None, 1000, "t"));
        }
        m.refresh_gauges();
        assert!(m.bytes() <= 64 * 1024, "{} bytes", m.bytes());
        assert!(m.len() < 200);
        assert!(!m.is_empty());
    }
}
