//! The access log: one line per request, written without blocking the request path.
//!
//! A line is formatted straight into bytes (text or JSON, the layout of the other log lines)
//! and appended to a shared buffer. A writer thread empties the buffer to stderr every
//! [`FLUSH_EVERY`], or as soon as [`FLUSH_AT`] bytes wait, so a slow stderr (a stalled
//! journald) never stalls a request: past [`MAX_BUFFERED`] lines are dropped and counted in
//! `sandgate_access_log_dropped_total`. Whether lines are written at all follows the
//! `sandgate::access` target of `RUST_LOG`, as for any other log line.

use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The longest a line waits in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Buffered bytes that wake the writer at once.
pub const FLUSH_AT: usize = 64 * 1024;
/// Buffered bytes past which new lines are dropped (the writer is stuck).
pub const MAX_BUFFERED: usize = 16 * 1024 * 1024;

/// What one access log line says.
pub struct Record<'a> {
    pub request_id: &'a str,
    /// The W3C trace id, `-` without one.
    pub trace_id: &'a str,
    pub client: IpAddr,
    pub listener: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub route: &'a str,
    pub backend: &'a str,
    pub attempts: u32,
    pub decision: &'a str,
    pub error: &'a str,
    pub detail: &'a str,
    pub duration_ms: f64,
    /// A tunnel's line, written when it closes: its bytes and why it ended.
    pub tunnel: Option<TunnelLog>,
}

/// What a tunnel's line adds.
#[derive(Debug, Clone, Copy)]
pub struct TunnelLog {
    /// Bytes from the client to the backend.
    pub bytes_up: u64,
    /// Bytes from the backend to the client.
    pub bytes_down: u64,
    /// Why it ended (`closed`, `idle_timeout`, ...).
    pub end: &'static str,
}

struct Sink {
    json: bool,
    buf: Mutex<Vec<u8>>,
    /// The writer was woken for a full buffer and has not emptied it yet.
    woken: AtomicBool,
    writer: Thread,
    dropped: metrics::Counter,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// Starts the writer thread; lines are JSON objects when `json`. Without it, no access log
/// line is written. Call once the metrics recorder is installed.
pub fn init(json: bool) -> std::io::Result<()> {
    let writer = std::thread::Builder::new()
        .name("sandgate-access-log".into())
        .spawn(|| loop {
            std::thread::park_timeout(FLUSH_EVERY);
            flush();
        })?;
    let sink = Sink {
        json,
        buf: Mutex::new(Vec::with_capacity(FLUSH_AT)),
        woken: AtomicBool::new(false),
        writer: writer.thread().clone(),
        dropped: metrics::counter!(crate::metrics::ACCESS_LOG_DROPPED_TOTAL),
    };
    if SINK.set(sink).is_err() {
        tracing::warn!("the access log was already started");
    }
    Ok(())
}

/// Whether a line would be written: started, and `sandgate::access` enabled.
pub fn enabled() -> bool {
    SINK.get().is_some() && tracing::enabled!(target: "sandgate::access", tracing::Level::INFO)
}

thread_local! {
    static LINE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Appends the line of `r` to the buffer.
pub fn write(r: &Record<'_>) {
    let Some(sink) = SINK.get() else { return };
    LINE.with_borrow_mut(|line| {
        line.clear();
        if sink.json {
            json(line, r);
        } else {
            text(line, r);
        }
        let mut buf = sink.buf.lock().unwrap_or_else(|p| p.into_inner());
        if buf.len() + line.len() > MAX_BUFFERED {
            drop(buf);
            sink.dropped.increment(1);
            return;
        }
        buf.extend_from_slice(line);
        let full = buf.len() >= FLUSH_AT;
        drop(buf);
        if full && !sink.woken.swap(true, Ordering::Relaxed) {
            sink.writer.unpark();
        }
    });
}

/// Writes out what is buffered (the writer thread's job; also called at exit).
pub fn flush() {
    let Some(sink) = SINK.get() else { return };
    let mut out = {
        let mut buf = sink.buf.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::replace(&mut *buf, Vec::with_capacity(FLUSH_AT))
    };
    sink.woken.store(false, Ordering::Relaxed);
    if out.is_empty() {
        return;
    }
    let mut err = std::io::stderr().lock();
    // Nowhere to report a failed log write but the log itself.
    let _ = err.write_all(&out).and_then(|()| err.flush());
    out.clear();
}

thread_local! {
    /// The second last written, and its `2026-12-01T10:00:00` text: a busy log formats the
    /// date once a second, not once a line.
    static SECOND: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
}

/// `2026-12-01T10:00:00.123456Z`, as the other log lines have it.
fn timestamp(out: &mut Vec<u8>) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    SECOND.with_borrow_mut(|(at, text)| {
        if *at != secs {
            let (days, rem) = (secs / 86_400, secs % 86_400);
            let (y, m, d) = civil(days as i64);
            text.clear();
            // Writing to a String cannot fail.
            let _ = std::fmt::Write::write_fmt(
                text,
                format_args!(
                    "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
                    rem / 3600,
                    rem / 60 % 60,
                    rem % 60
                ),
            );
            *at = secs;
        }
        out.extend_from_slice(text.as_bytes());
    });
    out.push(b'.');
    digits(out, u64::from(now.subsec_micros()), 6);
    out.push(b'Z');
}

/// `v` in decimal, zero-padded to `width` digits.
fn digits(out: &mut Vec<u8>, v: u64, width: usize) {
    let mut b = itoa::Buffer::new();
    let s = b.format(v);
    out.extend(std::iter::repeat_n(b'0', width.saturating_sub(s.len())));
    out.extend_from_slice(s.as_bytes());
}

/// `v` in decimal.
fn number(out: &mut Vec<u8>, v: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// Milliseconds to the microsecond, without trailing zeros (`1.25`, `3`, `0.007`).
fn millis(out: &mut Vec<u8>, ms: f64) {
    // `as` saturates: NaN becomes 0, and a negative or huge value its bound.
    let us = (ms * 1000.0).round().max(0.0) as u64;
    number(out, us / 1000);
    let mut frac = us % 1000;
    if frac != 0 {
        out.push(b'.');
        let mut width = 3;
        while frac % 10 == 0 {
            frac /= 10;
            width -= 1;
        }
        digits(out, frac, width);
    }
}

/// The client's address, IPv4 without the formatter.
fn client(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let mut buf = [0u8; 15];
            out.extend_from_slice(crate::headers::ipv4_text(v4, &mut buf));
        }
        IpAddr::V6(_) => {
            let _ = write!(out, "{ip}");
        }
    }
}

/// The calendar date of a day count since 1970-01-01 (proleptic Gregorian).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn text(out: &mut Vec<u8>, r: &Record<'_>) {
    timestamp(out);
    out.extend_from_slice(b"  INFO sandgate::access: request request_id=");
    out.extend_from_slice(r.request_id.as_bytes());
    out.extend_from_slice(b" trace_id=");
    out.extend_from_slice(r.trace_id.as_bytes());
    out.extend_from_slice(b" client=");
    client(out, r.client);
    out.extend_from_slice(b" listener=");
    out.extend_from_slice(r.listener.as_bytes());
    for (k, v) in [(" method=", r.method), (" path=", r.path)] {
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    out.extend_from_slice(b" status=");
    number(out, r.status);
    out.extend_from_slice(b" route=");
    out.extend_from_slice(r.route.as_bytes());
    out.extend_from_slice(b" backend=");
    out.extend_from_slice(r.backend.as_bytes());
    out.extend_from_slice(b" attempts=");
    number(out, r.attempts);
    out.extend_from_slice(b" decision=");
    out.extend_from_slice(r.decision.as_bytes());
    out.extend_from_slice(b" error=");
    out.extend_from_slice(r.error.as_bytes());
    // The detail is free text: quoted, as tracing writes a string with spaces.
    // Printable ASCII without quotes or backslashes reads the same escaped: written as it is.
    let plain = r
        .detail
        .bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\');
    if plain {
        out.extend_from_slice(b" detail=\"");
        out.extend_from_slice(r.detail.as_bytes());
        out.push(b'"');
    } else {
        let _ = write!(out, " detail={:?}", r.detail);
    }
    out.extend_from_slice(b" duration_ms=");
    millis(out, r.duration_ms);
    if let Some(t) = &r.tunnel {
        out.extend_from_slice(b" tunnel=");
        out.extend_from_slice(t.end.as_bytes());
        out.extend_from_slice(b" bytes_up=");
        number(out, t.bytes_up);
        out.extend_from_slice(b" bytes_down=");
        number(out, t.bytes_down);
    }
    out.push(b'\n');
}

fn json(out: &mut Vec<u8>, r: &Record<'_>) {
    out.extend_from_slice(b"{\"timestamp\":\"");
    timestamp(out);
    out.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\"");
    let key = |out: &mut Vec<u8>, k: &str| {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b"\":");
    };
    let string = |out: &mut Vec<u8>, k: &str, v: &str| {
        key(out, k);
        // serde_json escapes what JSON needs escaped; writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, v);
    };
    string(out, "request_id", r.request_id);
    string(out, "trace_id", r.trace_id);
    key(out, "client");
    out.push(b'"');
    client(out, r.client);
    out.push(b'"');
    string(out, "listener", r.listener);
    string(out, "method", r.method);
    string(out, "path", r.path);
    key(out, "status");
    number(out, r.status);
    string(out, "route", r.route);
    string(out, "backend", r.backend);
    key(out, "attempts");
    number(out, r.attempts);
    string(out, "decision", r.decision);
    string(out, "error", r.error);
    string(out, "detail", r.detail);
    key(out, "duration_ms");
    millis(out, r.duration_ms);
    if let Some(t) = &r.tunnel {
        string(out, "tunnel", t.end);
        key(out, "bytes_up");
        number(out, t.bytes_up);
        key(out, "bytes_down");
        number(out, t.bytes_down);
    }
    out.extend_from_slice(b",\"target\":\"sandgate::access\"}\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record<'static> {
        Record {
            request_id: "abc",
            trace_id: "-",
            client: IpAddr::from([127, 0, 0, 1]),
            listener: "public",
            method: "GET",
            path: "/a\"b\\c",
            status: 503,
            route: "api",
            backend: "127.0.0.1:9",
            attempts: 2,
            decision: "-",
            error: "no_backend",
            detail: "pool p: no usable backend\n",
            duration_ms: 1.25,
            tunnel: None,
        }
    }

    #[test]
    fn json_lines_parse_with_every_field() {
        let mut out = Vec::new();
        json(&mut out, &record());
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!(v["target"], "sandgate::access");
        assert_eq!(v["path"], "/a\"b\\c");
        assert_eq!(v["status"], 503);
        assert_eq!(v["attempts"], 2);
        assert_eq!(v["duration_ms"], 1.25);
        assert_eq!(v["detail"], "pool p: no usable backend\n");
        assert_eq!(v["client"], "127.0.0.1");
        let ts = v["timestamp"].as_str().expect("timestamp");
        assert!(
            ts.len() == 27 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
            "{ts}"
        );
    }

    #[test]
    fn text_lines_are_one_line() {
        let mut out = Vec::new();
        text(&mut out, &record());
        let s = String::from_utf8(out).expect("utf-8");
        assert_eq!(s.matches('\n').count(), 1, "{s}");
        assert!(s.contains(
            " INFO sandgate::access: request request_id=abc trace_id=- client=127.0.0.1 "
        ));
        assert!(s.contains(" status=503 route=api backend=127.0.0.1:9 attempts=2 "));
        assert!(s.contains("detail=\"pool p: no usable backend\\n\" duration_ms=1.25\n"));
    }

    #[test]
    fn numbers_without_the_formatter() {
        let ms = |v: f64| {
            let mut out = Vec::new();
            millis(&mut out, v);
            String::from_utf8(out).expect("utf-8")
        };
        assert_eq!(ms(1.25), "1.25");
        assert_eq!(ms(3.0), "3");
        assert_eq!(ms(0.007), "0.007");
        assert_eq!(ms(0.0004), "0");
        assert_eq!(ms(12345.6789), "12345.679");
        assert_eq!(ms(f64::NAN), "0");
        assert_eq!(ms(-2.0), "0");
        let mut out = Vec::new();
        digits(&mut out, 42, 6);
        assert_eq!(out, b"000042");
        let mut r = record();
        r.client = "2001:db8::1".parse().expect("ipv6");
        r.detail = "";
        r.tunnel = Some(TunnelLog {
            bytes_up: 10,
            bytes_down: 20,
            end: "closed",
        });
        let mut out = Vec::new();
        text(&mut out, &r);
        let s = String::from_utf8(out).expect("utf-8");
        assert!(s.contains(" client=2001:db8::1 "), "{s}");
        assert!(
            s.ends_with(" detail=\"\" duration_ms=1.25 tunnel=closed bytes_up=10 bytes_down=20\n"),
            "{s}"
        );
        for detail in [
            "-",
            "connect refused (127.0.0.1:9)",
            "a \"b\" \\ c",
            "tab\there",
            "é",
        ] {
            r.detail = detail;
            let mut out = Vec::new();
            text(&mut out, &r);
            let s = String::from_utf8(out).expect("utf-8");
            assert!(s.contains(&format!(" detail={detail:?} ")), "{s}");
        }
        let mut out = Vec::new();
        json(&mut out, &r);
        let v: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!(v["client"], "2001:db8::1");
        assert_eq!(v["tunnel"], "closed");
        assert_eq!(v["bytes_down"], 20);
    }

    #[test]
    fn timestamps_agree_with_the_clock() {
        let before = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
        let mut out = Vec::new();
        timestamp(&mut out);
        timestamp(&mut out);
        let s = String::from_utf8(out).expect("utf-8");
        let (a, b) = s.split_at(27);
        assert!(a.ends_with('Z') && b.ends_with('Z'), "{s}");
        let secs = before.as_secs();
        let (y, m, d) = civil((secs / 86_400) as i64);
        assert!(a.starts_with(&format!("{y:04}-{m:02}-{d:02}T")), "{a}");
        // The cached second is reused for the second line.
        assert!(b.starts_with(&a[..17]) || secs % 60 == 59, "{s}");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(11_016), (2000, 2, 29));
        assert_eq!(civil(20_788), (2026, 12, 1));
        assert_eq!(civil(-1), (1969, 12, 31));
    }
}
