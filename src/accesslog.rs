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

/// `2026-12-01T10:00:00.123456Z`, as the other log lines have it.
fn timestamp(out: &mut Vec<u8>) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil(days as i64);
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        now.subsec_micros()
    );
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
    let _ = write!(out, " client={} listener=", r.client);
    out.extend_from_slice(r.listener.as_bytes());
    for (k, v) in [(" method=", r.method), (" path=", r.path)] {
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    let _ = write!(out, " status={} route=", r.status);
    out.extend_from_slice(r.route.as_bytes());
    out.extend_from_slice(b" backend=");
    out.extend_from_slice(r.backend.as_bytes());
    let _ = write!(out, " attempts={} decision=", r.attempts);
    out.extend_from_slice(r.decision.as_bytes());
    out.extend_from_slice(b" error=");
    out.extend_from_slice(r.error.as_bytes());
    // The detail is free text: quoted, as tracing writes a string with spaces.
    let _ = write!(out, " detail={:?} duration_ms={}", r.detail, r.duration_ms);
    if let Some(t) = &r.tunnel {
        let _ = write!(
            out,
            " tunnel={} bytes_up={} bytes_down={}",
            t.end, t.bytes_up, t.bytes_down
        );
    }
    out.push(b'\n');
}

fn json(out: &mut Vec<u8>, r: &Record<'_>) {
    out.extend_from_slice(b"{\"timestamp\":\"");
    timestamp(out);
    out.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\"");
    let string = |out: &mut Vec<u8>, k: &str, v: &str| {
        let _ = write!(out, ",\"{k}\":");
        // serde_json escapes what JSON needs escaped; writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, v);
    };
    string(out, "request_id", r.request_id);
    string(out, "trace_id", r.trace_id);
    let _ = write!(out, ",\"client\":\"{}\"", r.client);
    string(out, "listener", r.listener);
    string(out, "method", r.method);
    string(out, "path", r.path);
    let _ = write!(out, ",\"status\":{}", r.status);
    string(out, "route", r.route);
    string(out, "backend", r.backend);
    let _ = write!(out, ",\"attempts\":{}", r.attempts);
    string(out, "decision", r.decision);
    string(out, "error", r.error);
    string(out, "detail", r.detail);
    let ms = if r.duration_ms.is_finite() {
        r.duration_ms
    } else {
        0.0
    };
    let _ = write!(out, ",\"duration_ms\":{ms}");
    if let Some(t) = &r.tunnel {
        let _ = write!(
            out,
            ",\"tunnel\":\"{}\",\"bytes_up\":{},\"bytes_down\":{}",
            t.end, t.bytes_up, t.bytes_down
        );
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
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(11_016), (2000, 2, 29));
        assert_eq!(civil(20_788), (2026, 12, 1));
        assert_eq!(civil(-1), (1969, 12, 31));
    }
}
