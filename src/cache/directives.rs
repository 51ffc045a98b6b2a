//! Cache directives, parsed: `Cache-Control` and `Surrogate-Control` (RFC 9111 section 5.2 list
//! syntax: `token [ "=" ( token / quoted-string ) ]`) and `CDN-Cache-Control` (RFC 9213, a
//! Structured Field Dictionary). Pure.
//!
//! Names are case-insensitive. A value that does not parse, or a directive repeated with a
//! different value, is marked [`Dir::Invalid`] so that policy takes the safest reading.

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// RFC 9111 section 1.2.2: a delta-seconds too large to represent counts as 2^31.
pub const DELTA_MAX: u64 = 2_147_483_648;

/// A directive with a delta-seconds argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dir {
    /// Not present.
    #[default]
    Absent,
    /// Present with this many seconds.
    Secs(u64),
    /// Present, but malformed or contradicted by a repeat.
    Invalid,
}

impl Dir {
    /// Whether the directive appears at all.
    pub fn present(self) -> bool {
        self != Dir::Absent
    }

    fn set(&mut self, v: Option<u64>) {
        *self = match (*self, v) {
            (_, None) => Dir::Invalid,
            (Dir::Absent, Some(s)) => Dir::Secs(s),
            (Dir::Secs(a), Some(b)) if a == b => Dir::Secs(a),
            _ => Dir::Invalid,
        };
    }
}

/// A directive that may list field names (`no-cache="a, b"`, `private="a"`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Fields {
    /// Not present.
    #[default]
    Absent,
    /// Present without an argument: applies to the whole response.
    All,
    /// Present with field names: applies to those fields only.
    Named(Vec<HeaderName>),
}

impl Fields {
    fn add(&mut self, arg: Option<Arg<'_>>) {
        let names = match arg {
            None => None,
            Some(Arg::Quoted(s)) => s
                .split(',')
                .map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
                .collect::<Option<Vec<_>>>(),
            Some(Arg::Token(t)) => HeaderName::from_bytes(t.as_bytes()).ok().map(|n| vec![n]),
            // A malformed argument: the whole response (the safe reading).
            Some(Arg::Malformed) => None,
        };
        *self = match (std::mem::take(self), names) {
            (Fields::All, _) | (_, None) => Fields::All,
            (Fields::Absent, Some(n)) => Fields::Named(n),
            (Fields::Named(mut a), Some(b)) => {
                a.extend(b);
                Fields::Named(a)
            }
        };
    }
}

/// The directives of one field family, request or response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directives {
    /// `max-age`.
    pub max_age: Dir,
    /// `s-maxage`.
    pub s_maxage: Dir,
    /// `min-fresh` (request).
    pub min_fresh: Dir,
    /// `stale-while-revalidate` (RFC 5861).
    pub stale_while_revalidate: Dir,
    /// `stale-if-error` (RFC 5861).
    pub stale_if_error: Dir,
    /// `no-store`.
    pub no_store: bool,
    /// `no-cache`, bare or with field names.
    pub no_cache: Fields,
    /// `private`, bare or with field names.
    pub private: Fields,
    /// `public`.
    pub public: bool,
    /// `must-revalidate`.
    pub must_revalidate: bool,
    /// `proxy-revalidate`.
    pub proxy_revalidate: bool,
    /// `must-understand`.
    pub must_understand: bool,
    /// `only-if-cached` (request).
    pub only_if_cached: bool,
}

/// A directive's argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arg<'a> {
    Token(&'a str),
    /// Unescaped content of a quoted-string (escapes are rare in directives and dropped).
    Quoted(&'a str),
    Malformed,
}

fn tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses a delta-seconds: digits only; too large counts as [`DELTA_MAX`].
fn delta(arg: Option<Arg<'_>>) -> Option<u64> {
    let s = match arg? {
        Arg::Token(s) | Arg::Quoted(s) => s,
        Arg::Malformed => return None,
    };
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse::<u64>().map_or(DELTA_MAX, |n| n.min(DELTA_MAX)))
}

/// Splits one field value into `(name, argument)` elements; quoted commas do not split.
fn elements(v: &str, mut each: impl FnMut(&str, Option<Arg<'_>>)) {
    let b = v.as_bytes();
    let mut i = 0;
    while i < b.len() {
        // Skip separators and whitespace between elements.
        while i < b.len() && (b[i] == b',' || b[i] == b' ' || b[i] == b'\t') {
            i += 1;
        }
        let start = i;
        while i < b.len() && tchar(b[i]) {
            i += 1;
        }
        let name = &v[start..i];
        let arg = if i < b.len() && b[i] == b'=' {
            i += 1;
            if i < b.len() && b[i] == b'"' {
                i += 1;
                let q = i;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                let inner = v.get(q..i.min(b.len())).unwrap_or("");
                if i < b.len() {
                    i += 1;
                    Some(Arg::Quoted(inner))
                } else {
                    Some(Arg::Malformed)
                }
            } else {
                let t = i;
                while i < b.len() && tchar(b[i]) {
                    i += 1;
                }
                if t == i {
                    Some(Arg::Malformed)
                } else {
                    Some(Arg::Token(&v[t..i]))
                }
            }
        } else {
            None
        };
        // Anything else before the next comma (e.g. `max-age =1`) makes the element malformed.
        let mut junk = false;
        while i < b.len() && b[i] != b',' {
            if b[i] != b' ' && b[i] != b'\t' {
                junk = true;
            }
            i += 1;
        }
        if !name.is_empty() {
            each(name, if junk { Some(Arg::Malformed) } else { arg });
        } else if start == i {
            i += 1;
        }
    }
}

impl Directives {
    /// Parses every line of the field `name` in `headers`.
    pub fn parse(headers: &HeaderMap, name: &HeaderName) -> Self {
        let mut d = Directives::default();
        for v in headers.get_all(name) {
            d.add_line(v);
        }
        d
    }

    fn add_line(&mut self, v: &HeaderValue) {
        // Directives are ASCII; a line with other bytes still parses up to them.
        let text = String::from_utf8_lossy(v.as_bytes());
        elements(&text, |name, arg| self.add(name, arg));
    }

    fn add(&mut self, name: &str, arg: Option<Arg<'_>>) {
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        if is("max-age") {
            self.max_age.set(delta(arg));
        } else if is("s-maxage") {
            self.s_maxage.set(delta(arg));
        } else if is("min-fresh") {
            self.min_fresh.set(delta(arg));
        } else if is("stale-while-revalidate") {
            self.stale_while_revalidate.set(delta(arg));
        } else if is("stale-if-error") {
            self.stale_if_error.set(delta(arg));
        } else if is("no-store") {
            self.no_store = true;
        } else if is("no-cache") {
            self.no_cache.add(arg);
        } else if is("private") {
            self.private.add(arg);
        } else if is("public") {
            self.public = true;
        } else if is("must-revalidate") {
            self.must_revalidate = true;
        } else if is("proxy-revalidate") {
            self.proxy_revalidate = true;
        } else if is("must-understand") {
            self.must_understand = true;
        } else if is("only-if-cached") {
            self.only_if_cached = true;
        }
    }

    /// Parses `CDN-Cache-Control` (a Structured Field Dictionary); None when the field is
    /// absent, is not a valid Dictionary, or gives a delta directive (`max-age`...) a value
    /// that is not a non-negative integer; the field is then ignored (RFC 9213 section 2.1).
    /// Unknown members are ignored.
    pub fn parse_cdn(headers: &HeaderMap, name: &HeaderName) -> Option<Self> {
        let mut lines = headers.get_all(name).iter().peekable();
        lines.peek()?;
        let mut joined = Vec::new();
        for (i, v) in lines.enumerate() {
            if i > 0 {
                joined.extend_from_slice(b", ");
            }
            joined.extend_from_slice(v.as_bytes());
        }
        let dict: sfv::Dictionary = sfv::Parser::new(&joined).parse().ok()?;
        let mut d = Directives::default();
        for (key, entry) in &dict {
            let sfv::ListEntry::Item(item) = entry else {
                continue;
            };
            let secs = match &item.bare_item {
                sfv::BareItem::Integer(n) => u64::try_from(i64::from(*n)).ok(),
                _ => None,
            };
            let flag = matches!(item.bare_item, sfv::BareItem::Boolean(true));
            let delta = match key.as_str() {
                "max-age" => Some(&mut d.max_age),
                "s-maxage" => Some(&mut d.s_maxage),
                "stale-while-revalidate" => Some(&mut d.stale_while_revalidate),
                "stale-if-error" => Some(&mut d.stale_if_error),
                _ => None,
            };
            if let Some(dir) = delta {
                // A delta directive that is not a non-negative integer makes the field
                // invalid: it is ignored and Cache-Control applies (the safe reading).
                *dir = Dir::Secs(secs?.min(DELTA_MAX));
                continue;
            }
            match key.as_str() {
                "no-store" => d.no_store |= flag,
                // Field-name arguments are not carried by CDN-Cache-Control: any value means
                // the whole response.
                "no-cache" => d.no_cache = Fields::All,
                "private" => d.private = Fields::All,
                "public" => d.public |= flag,
                "must-revalidate" => d.must_revalidate |= flag,
                "proxy-revalidate" => d.proxy_revalidate |= flag,
                "must-understand" => d.must_understand |= flag,
                _ => {}
            }
        }
        Some(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cc(lines: &[&str]) -> Directives {
        let mut h = HeaderMap::new();
        for l in lines {
            h.append(
                http::header::CACHE_CONTROL,
                HeaderValue::from_str(l).unwrap(),
            );
        }
        Directives::parse(&h, &http::header::CACHE_CONTROL)
    }

    fn cdn(line: &str) -> Option<Directives> {
        let name = HeaderName::from_static("cdn-cache-control");
        let mut h = HeaderMap::new();
        h.insert(name.clone(), HeaderValue::from_str(line).unwrap());
        Directives::parse_cdn(&h, &name)
    }

    #[test]
    fn names_are_case_insensitive_and_values_are_delta_seconds() {
        assert_eq!(cc(&["MaX-AgE=3600"]).max_age, Dir::Secs(3600));
        assert_eq!(cc(&["max-age=003600"]).max_age, Dir::Secs(3600));
        assert_eq!(cc(&["max-age=\"3600\""]).max_age, Dir::Secs(3600));
        assert!(cc(&["No-StOrE"]).no_store);
        for bad in [
            "max-age=a100",
            "max-age=100a",
            "max-age=-100",
            "max-age='3600'",
            "max-age=3600.0",
            "max-age =100",
            "max-age= 100",
            "max-age=",
        ] {
            assert_eq!(cc(&[bad]).max_age, Dir::Invalid, "{bad}");
        }
        assert_eq!(cc(&["max-age=99999999999"]).max_age, Dir::Secs(DELTA_MAX));
    }

    #[test]
    fn quoted_strings_hide_directives_and_commas() {
        let d = cc(&["extension=\"max-age=3600, no-store\", max-age=1"]);
        assert_eq!(d.max_age, Dir::Secs(1));
        assert!(!d.no_store);
        let d = cc(&["max-age=1, extension=\"max-age=3600\""]);
        assert_eq!(d.max_age, Dir::Secs(1));
    }

    #[test]
    fn conflicting_repeats_are_invalid_and_equal_repeats_are_fine() {
        assert_eq!(cc(&["max-age=1800, max-age=1"]).max_age, Dir::Invalid);
        assert_eq!(cc(&["max-age=1800", "max-age=1"]).max_age, Dir::Invalid);
        assert_eq!(cc(&["max-age=60", "max-age=60"]).max_age, Dir::Secs(60));
    }

    #[test]
    fn field_lists() {
        let a = HeaderName::from_static("a");
        let b = HeaderName::from_static("b");
        assert_eq!(
            cc(&["no-cache=\"a, b\""]).no_cache,
            Fields::Named(vec![a.clone(), b])
        );
        assert_eq!(cc(&["private=a"]).private, Fields::Named(vec![a.clone()]));
        assert_eq!(cc(&["no-cache"]).no_cache, Fields::All);
        assert_eq!(cc(&["no-cache=\"a\", no-cache"]).no_cache, Fields::All);
        assert_eq!(cc(&["max-age=5"]).no_cache, Fields::Absent);
    }

    #[test]
    fn cdn_cache_control_is_a_structured_dictionary() {
        let d = cdn("max-age=3600, foobar").unwrap();
        assert_eq!(d.max_age, Dir::Secs(3600));
        assert!(cdn("no-store").unwrap().no_store);
        assert!(matches!(cdn("private").unwrap().private, Fields::All));
        // A wrong type or an invalid dictionary ignores the whole field.
        assert!(cdn("max-age=\"10000\"").is_none());
        assert!(cdn("max-age=-1").is_none());
        assert!(cdn("max-age=10000, &&&&&").is_none());
        assert!(Directives::parse_cdn(&HeaderMap::new(), &HeaderName::from_static("x")).is_none());
    }
}
