//! One connection's watch: what hyper's HTTP/1.1 server is given around the socket so that a connection cannot
//! stay open for nothing, and so that hyper's own error answers are problem documents.
//!
//! - [`Activity`]: what the connection is doing (bytes read, requests being answered, output not yet flushed,
//!   which timeout closed it), shared by the pieces below.
//! - [`HeadTimer`]: the timer behind hyper's header-read timeout. hyper starts it whenever it waits for a request
//!   head (on a fresh connection and between keep-alive requests); it fires `idle` after that if no byte came,
//!   else `header` after the first byte of the head.
//! - [`EdgeIo`]: the socket, counting reads, failing a write that made no progress for `idle`, and writing a
//!   problem+json answer in place of the empty 400/414/431 that hyper sends for a request it cannot parse (hyper
//!   1.x offers no hook for those; its error head is recognised as the only response head that is 400, 414 or 431
//!   with `content-length: 0`, written while no request is being answered — every response of the router has a
//!   problem+json body).
//! - [`Tracked`]: a response body that counts its request as being answered until hyper drops it.
//!
//! Uses hyper, tokio and the API's problem documents.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::StatusCode;
use hyper::body::{Body as HttpBody, Bytes, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::api::error::PROBLEM_JSON;
use crate::api::ApiError;

const CLOSED_BY_HEADER: u8 = 1;
const CLOSED_BY_IDLE: u8 = 2;
const CLOSED_BY_WRITE: u8 = 3;

/// What one connection is doing, shared by its socket wrapper, its timer and its service.
#[derive(Default)]
pub(super) struct Activity {
    /// Reads that returned bytes.
    reads: AtomicU64,
    /// Requests passed to the router whose response body hyper has not dropped yet.
    busy: AtomicUsize,
    /// Bytes handed to the socket since the last completed flush.
    writing: AtomicBool,
    closed_by: AtomicU8,
    /// Status of the hyper error answer rewritten as a problem (0: none).
    rewritten: AtomicU16,
}

impl Activity {
    /// Neither answering a request nor holding unflushed output: closing it now loses no response.
    pub(super) fn is_quiet(&self) -> bool {
        self.busy.load(Ordering::SeqCst) == 0 && !self.writing.load(Ordering::SeqCst)
    }

    /// The timeout that closed the connection, as the metric's `reason` label.
    pub(super) fn timeout_reason(&self) -> Option<&'static str> {
        match self.closed_by.load(Ordering::SeqCst) {
            CLOSED_BY_HEADER => Some("header"),
            CLOSED_BY_IDLE => Some("idle"),
            CLOSED_BY_WRITE => Some("write"),
            _ => None,
        }
    }

    /// The status of hyper's own error answer, when one was sent (as a problem).
    pub(super) fn rewritten_status(&self) -> Option<u16> {
        Some(self.rewritten.load(Ordering::SeqCst)).filter(|s| *s != 0)
    }

    /// Marks a request as being answered until the guard is dropped.
    pub(super) fn begin_request(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::SeqCst);
        Busy(self.clone())
    }
}

/// A request being answered; dropped with its response body.
pub(super) struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its request counted as being answered until hyper is done with it.
pub(super) struct Tracked {
    pub body: Body,
    pub _busy: Busy,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// hyper's timer, used by its HTTP/1.1 server only for the header-read timeout (set to `header`).
#[derive(Clone)]
pub(super) struct HeadTimer {
    pub activity: Arc<Activity>,
    pub header: Duration,
    pub idle: Duration,
}

impl HeadTimer {
    fn wait(&self) -> HeadWait {
        HeadWait {
            activity: self.activity.clone(),
            reads_at_start: self.activity.reads.load(Ordering::SeqCst),
            header: self.header,
            head_begun: false,
            sleep: Box::pin(tokio::time::sleep(self.idle)),
        }
    }
}

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, _duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(self.wait())
    }

    fn sleep_until(&self, _deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(self.wait())
    }
}

/// The wait for one request head: `idle` while no byte has come, then `header` from the first one.
struct HeadWait {
    activity: Arc<Activity>,
    reads_at_start: u64,
    header: Duration,
    head_begun: bool,
    sleep: Pin<Box<Sleep>>,
}

impl Future for HeadWait {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        // hyper polls this right after each read that left the head incomplete, so the first byte is seen at once.
        if !this.head_begun && this.activity.reads.load(Ordering::SeqCst) != this.reads_at_start {
            this.head_begun = true;
            this.sleep.as_mut().reset(Instant::now() + this.header);
        }
        ready!(this.sleep.as_mut().poll(cx));
        let reason = if this.head_begun { CLOSED_BY_HEADER } else { CLOSED_BY_IDLE };
        this.activity.closed_by.store(reason, Ordering::SeqCst);
        Poll::Ready(())
    }
}

impl hyper::rt::Sleep for HeadWait {}

/// The socket as hyper sees it.
pub(super) struct EdgeIo {
    stream: TcpStream,
    activity: Arc<Activity>,
    /// A write making no progress for this long fails (a client that stopped reading).
    stall_limit: Duration,
    stall: Option<Pin<Box<Sleep>>>,
    /// A problem answer written in place of hyper's own empty one, and how much of it is written.
    replacement: Option<(Vec<u8>, usize)>,
}

impl EdgeIo {
    pub(super) fn new(stream: TcpStream, activity: Arc<Activity>, stall_limit: Duration) -> Self {
        Self { stream, activity, stall_limit, stall: None, replacement: None }
    }

    /// A pending write: start (or keep) the stall clock; ready again: stop it.
    fn watch_stall<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.stall = None;
            return poll;
        }
        let limit = self.stall_limit;
        let stall = self.stall.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if stall.as_mut().poll(cx).is_ready() {
            self.activity.closed_by.store(CLOSED_BY_WRITE, Ordering::SeqCst);
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading")));
        }
        Poll::Pending
    }

    /// Writes out the replacement answer, if one is pending.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = &self.replacement {
            let poll = Pin::new(&mut self.stream).poll_write(cx, &bytes[*written..]);
            match ready!(self.watch_stall(cx, poll)) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    let (bytes, written) = self.replacement.as_mut().expect("checked above");
                    *written += n;
                    if *written == bytes.len() {
                        self.replacement = None;
                    }
                }
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Takes `head` in place of hyper's own error answer when that is what it is.
    fn replace_hyper_error(&mut self, head: &[u8]) -> bool {
        if self.activity.busy.load(Ordering::SeqCst) != 0 {
            return false;
        }
        match problem_for_hyper_error(head) {
            Some((status, replacement)) => {
                self.activity.rewritten.store(status, Ordering::SeqCst);
                self.replacement = Some((replacement, 0));
                true
            }
            None => false,
        }
    }
}

impl AsyncRead for EdgeIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.reads.fetch_add(1, Ordering::SeqCst);
        }
        poll
    }
}

impl AsyncWrite for EdgeIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.activity.writing.store(true, Ordering::SeqCst);
        ready!(this.poll_replacement(cx))?;
        if this.replace_hyper_error(buf) {
            // hyper's bytes count as taken; the replacement goes out on this call or with the flush that follows.
            let _ = this.poll_replacement(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        let poll = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.watch_stall(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.activity.writing.store(true, Ordering::SeqCst);
        ready!(this.poll_replacement(cx))?;
        // hyper's error answer is a head alone, one slice.
        let mut slices = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(head), None) = (slices.next(), slices.next()) {
            if this.replace_hyper_error(head) {
                let _ = this.poll_replacement(cx)?;
                return Poll::Ready(Ok(head.len()));
            }
        }
        let poll = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.watch_stall(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_replacement(cx))?;
        let flushed = ready!(Pin::new(&mut this.stream).poll_flush(cx));
        this.activity.writing.store(false, Ordering::SeqCst);
        Poll::Ready(flushed)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_replacement(cx))?;
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}

/// A whole HTTP/1.1 response carrying `problem`: status line, `headers` (each ending in CRLF), the problem's
/// own headers (`retry-after` if it has one, a fresh `x-request-id`), `connection: close`, the body.
pub(super) fn raw_problem(problem: &ApiError, headers: &str) -> Vec<u8> {
    let body = problem.document().to_string();
    let status = problem.status;
    let mut response = format!("HTTP/1.1 {} {}\r\n{headers}", status.as_u16(), status.canonical_reason().unwrap_or(""));
    if let Some(secs) = problem.retry_after_secs {
        response.push_str(&format!("retry-after: {secs}\r\n"));
    }
    if !headers.to_ascii_lowercase().contains("connection:") {
        response.push_str("connection: close\r\n");
    }
    response.push_str(&format!(
        "content-type: {PROBLEM_JSON}\r\ncontent-length: {}\r\nx-request-id: {}\r\n\r\n{body}",
        body.len(),
        uuid::Uuid::new_v4()
    ));
    response.into_bytes()
}

/// hyper's automatic answer to a request it could not parse, as (status, the problem answer to send instead).
fn problem_for_hyper_error(head: &[u8]) -> Option<(u16, Vec<u8>)> {
    let (status, kind, detail) = match head.get(..13)? {
        b"HTTP/1.1 400 " => (
            StatusCode::BAD_REQUEST,
            "malformed-request",
            "the request is not valid HTTP/1.1: its method, target, a header or the version could not be parsed",
        ),
        b"HTTP/1.1 414 " => {
            (StatusCode::URI_TOO_LONG, "uri-too-long", "the request target is too long; send long input in a POST body")
        }
        b"HTTP/1.1 431 " => (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers-too-large",
            "the request head has too many or too large header fields",
        ),
        _ => return None,
    };
    let text = std::str::from_utf8(head).ok()?.strip_suffix("\r\n\r\n")?;
    let mut lines = text.split("\r\n").skip(1);
    let mut kept = String::new();
    let mut empty_body = false;
    for line in lines.by_ref() {
        let lower = line.to_ascii_lowercase();
        if lower == "content-length: 0" {
            empty_body = true;
        } else if lower.starts_with("content-length:") || lower.starts_with("transfer-encoding:") {
            return None;
        } else {
            kept.push_str(line);
            kept.push_str("\r\n");
        }
    }
    empty_body.then(|| (status.as_u16(), raw_problem(&ApiError::new(status, kind, detail), &kept)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hyper_error_heads_with_an_empty_body_are_replaced() {
        let head = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: Tue, 01 Dec 2026 00:00:00 GMT\r\n\r\n";
        let (status, replacement) = problem_for_hyper_error(head).expect("replaced");
        assert_eq!(status, 400);
        let text = String::from_utf8(replacement).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
        assert!(head.contains("date: Tue"), "{head}");
        assert!(head.contains("content-type: application/problem+json"), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
        assert!(head.contains("connection: close"), "{head}");
        let problem: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(problem["type"], "/problems/malformed-request");
        assert_eq!(problem["status"], 400);

        for status in ["414 URI Too Long", "431 Request Header Fields Too Large"] {
            let head = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
            assert!(problem_for_hyper_error(head.as_bytes()).is_some(), "{status}");
        }
        // Our own answers carry bodies; other statuses and partial heads are left alone.
        assert!(problem_for_hyper_error(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 97\r\n\r\n").is_none());
        assert!(problem_for_hyper_error(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(problem_for_hyper_error(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n").is_none());
        assert!(problem_for_hyper_error(b"HTTP/1.1 400 Bad Request\r\ntransfer-encoding: chunked\r\n\r\n").is_none());
    }
}
