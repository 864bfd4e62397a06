//! Serving HTTP/2 (RFC 9113) with the `h2` crate: the handshake with our settings, one task per
//! stream, request bodies read with flow control ([`crate::proxy::recv::RecvBody`]), response
//! bodies written within the peer's window, `100 (Continue)`, stream resets and the graceful
//! close (GOAWAY).
//!
//! hyper's HTTP/2 server cannot send a 1xx response (hyperium/hyper#2743), so a client that
//! sends `Expect: 100-continue` waits out its own timer (curl: 1 s) before sending a body. This
//! module does what hyper's does otherwise, the way it does it (the same `h2` settings, a task
//! per stream, no copy of a DATA frame), and sends `100 (Continue)` the first time the request
//! body is read — as hyper's HTTP/1.1 server does — never when the answer needs no body (413,
//! 417, 429). HTTP/1.1 stays with hyper ([`super::conn`]).
//!
//! Two defences live here. A stream whose response makes no progress for `server.send_timeout`
//! because the client's flow-control window stays shut is reset with CANCEL (`Stream`), and a
//! client that resets more streams than its budget ([`RESET_BURST`], [`RESET_REFILL_PER_SECOND`])
//! is sent GOAWAY with ENHANCE_YOUR_CALM (rapid reset, CVE-2023-44487, with a delay or not).
//!
//! What it must never do: log a request value (headers, body), buffer a body, or keep working
//! for a stream its client has reset.

use std::future::Future;
use std::io;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use h2::server::{Builder, Handshake, SendResponse};
use h2::{Reason, SendStream};
use http::header::{self, CONTENT_LENGTH, DATE};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use crate::proxy::body::ClientBody;
use crate::proxy::recv::RecvBody;
use crate::proxy::{ConnInfo, Proxy};

/// The client connection preface (RFC 9113 §3.4) that opens HTTP/2 by prior knowledge (h2c).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// hyper 1.12's HTTP/2 server settings, kept so that serving performs as it did under hyper:
// windows of 1 MiB instead of the protocol's 64 KiB, 16 KiB frames, and up to 400 KiB queued
// per stream for sending.
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024;
const MAX_FRAME_SIZE: u32 = 16 * 1024;
const MAX_SEND_BUFFER: usize = 400 * 1024;
const MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// Streams a client may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
const MAX_CONCURRENT_STREAMS: u32 = 256;

/// Streams a client may reset before their response has ended, at once, before it is sent
/// GOAWAY with ENHANCE_YOUR_CALM (RFC 9113 §5.4.1) and the connection closes: as many as it
/// may have open at once (`MAX_CONCURRENT_STREAMS`, 256). A reset stream has cost an upstream
/// exchange the client walked away from; resetting many in a row is rapid reset
/// (CVE-2023-44487), with or without a delay. The budget refills at
/// [`RESET_REFILL_PER_SECOND`] (a token bucket, GCRA): a browser that cancels a few streams
/// now and then, or every request of a page it navigates away from, never runs out; a client
/// resetting streams as fast as it opens them runs out after about this many.
pub const RESET_BURST: u32 = MAX_CONCURRENT_STREAMS;
/// How fast the reset budget ([`RESET_BURST`]) refills, in streams per second.
pub const RESET_REFILL_PER_SECOND: u32 = 10;

/// The settings every HTTP/2 connection is served with (an `h2` server builder).
pub type Settings = Builder;

/// The `h2` server settings: hyper's defaults, 256 concurrent streams, and a header list of at
/// most `max_header_list_size` bytes, the hard cap of [`super::conn::protocol_head_cap`]: a
/// larger one is answered 431 by `h2` itself, without a record, and one over four times it
/// ends the connection.
pub fn settings(max_header_list_size: u32) -> Settings {
    let mut b = Builder::new();
    b.initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_header_list_size(max_header_list_size)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS);
    b
}

/// What every stream of a connection shares: one reference count per stream.
struct Service {
    proxy: Arc<Proxy>,
    info: ConnInfo,
    /// `server.send_timeout`.
    send_timeout: Duration,
    /// The client's reset budget, made on its first reset: most connections never need it.
    resets: OnceLock<governor::DefaultDirectRateLimiter>,
    /// The reset budget ran out: the connection sends GOAWAY (ENHANCE_YOUR_CALM).
    calm_down: AtomicBool,
    /// Streams waiting for their answer (the response head): a graceful close waits for them
    /// though no byte moves, as it does for HTTP/1.1. A stream sending its body is the I/O's:
    /// one whose upstream stalls mid-body holds a closing connection no longer than
    /// `server.send_timeout`.
    answering: AtomicUsize,
}

impl Service {
    /// Counts a stream the client reset before its response ended against the budget.
    fn client_reset(&self) {
        let budget = self.resets.get_or_init(|| {
            let burst = NonZeroU32::new(RESET_BURST).unwrap_or(NonZeroU32::MIN);
            let rate = NonZeroU32::new(RESET_REFILL_PER_SECOND).unwrap_or(NonZeroU32::MIN);
            governor::RateLimiter::direct(governor::Quota::per_second(rate).allow_burst(burst))
        });
        if budget.check().is_err() && !self.calm_down.swap(true, Ordering::Relaxed) {
            tracing::debug!("client reset more streams than its budget: GOAWAY");
        }
    }
}

enum State<T> {
    Handshaking(Handshake<Coalesced<T>, Bytes>),
    Serving(h2::server::Connection<Coalesced<T>, Bytes>),
}

/// One HTTP/2 connection being served: a future that ends when the connection closes, with
/// `Err` if it ended on a protocol or I/O error. Each stream runs in a task of its own.
pub struct Connection<T> {
    state: State<T>,
    service: Arc<Service>,
    /// A graceful shutdown asked for before the handshake finished.
    close_pending: bool,
    /// A request has been accepted.
    accepted: bool,
    /// GOAWAY (ENHANCE_YOUR_CALM) has been sent.
    calmed: bool,
    /// The connection's I/O as `h2` writes to it, written out at the end of each poll.
    written: Coalesced<T>,
}

impl<T: AsyncRead + AsyncWrite + Unpin> Connection<T> {
    /// Starts the server side of the handshake on `io` (the client preface and SETTINGS).
    /// `send_timeout` is how long a stream's response may wait for the client's window.
    pub fn new(
        io: T,
        settings: &Settings,
        proxy: Arc<Proxy>,
        info: ConnInfo,
        send_timeout: Duration,
    ) -> Connection<T> {
        let io = Coalesced::new(io);
        Connection {
            state: State::Handshaking(settings.handshake(io.clone())),
            service: Arc::new(Service {
                proxy,
                info,
                send_timeout,
                resets: OnceLock::new(),
                calm_down: AtomicBool::new(false),
                answering: AtomicUsize::new(0),
            }),
            close_pending: false,
            accepted: false,
            calmed: false,
            written: io,
        }
    }

    /// Whether a request (a stream's header block) has been accepted on this connection.
    pub fn has_accepted_stream(&self) -> bool {
        self.accepted
    }

    /// Whether a stream is still waiting for its answer (the response head).
    pub fn has_answering_streams(&self) -> bool {
        self.service.answering.load(Ordering::Relaxed) > 0
    }

    /// Sends GOAWAY: streams already open finish, no new one is accepted, and the connection
    /// closes once the last one has. The future must still be polled to the end.
    pub fn graceful_shutdown(self: Pin<&mut Self>) {
        let this = self.get_mut();
        match &mut this.state {
            State::Handshaking(_) => this.close_pending = true,
            State::Serving(conn) => conn.graceful_shutdown(),
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Future for Connection<T> {
    type Output = Result<(), h2::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let polled = this.poll_serve(cx);
        if polled.is_pending() {
            // `h2` has written all it could this time round: out it goes, as one write.
            if let Err(e) = ready!(this.written.poll_write_out(cx)) {
                // The connection is broken: it ends here, as `h2` would end it on its next
                // write.
                tracing::debug!(error = %e, "writing to the client failed");
                return Poll::Ready(Err(h2::Error::from(Reason::INTERNAL_ERROR)));
            }
        }
        polled
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Connection<T> {
    /// Drives `h2`: the handshake, then accepting streams, each into a task of its own.
    fn poll_serve(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), h2::Error>> {
        loop {
            match &mut self.state {
                State::Handshaking(hs) => {
                    let mut conn = ready!(Pin::new(hs).poll(cx))?;
                    if self.close_pending {
                        conn.graceful_shutdown();
                    }
                    self.state = State::Serving(conn);
                }
                State::Serving(conn) => {
                    // Set by a stream task when the client's reset budget ran out; checked on
                    // the frame after, which a client still resetting streams always sends.
                    if !self.calmed && self.service.calm_down.load(Ordering::Relaxed) {
                        self.calmed = true;
                        conn.abrupt_shutdown(Reason::ENHANCE_YOUR_CALM);
                    }
                    match ready!(conn.poll_accept(cx)) {
                        Some(Ok((req, reply))) => {
                            self.accepted = true;
                            let (parts, recv) = req.into_parts();
                            let (body, continue_wanted) = RecvBody::new(recv, &parts.headers);
                            let req = Request::from_parts(parts, ClientBody::H2(body));
                            let svc = self.service.clone();
                            // Boxed once: the stream's task holds a pointer, not the request
                            // state.
                            let handling =
                                Box::pin(async move { svc.proxy.handle(req, &svc.info).await });
                            let svc = self.service.clone();
                            tokio::spawn(Stream::new(svc, handling, continue_wanted, reply));
                        }
                        Some(Err(e)) => return Poll::Ready(Err(e)),
                        None => return Poll::Ready(Ok(())),
                    }
                }
            }
        }
    }
}

/// One stream, as its own task: the proxy's answer, raced against the client resetting the
/// stream, then the response body written out. The access log record is written when the
/// response body is dropped (see [`crate::proxy::logging::CapturedBody`]): once it has ended, or
/// when the stream is reset or fails.
///
/// A response waiting for the client's flow-control window (stream or connection) for
/// `server.send_timeout` is given up: the stream is reset with CANCEL (RFC 9113 §7: the
/// stream is no longer needed; no error of the server's, so not INTERNAL_ERROR), which drops
/// the body and the upstream connection behind it. The timer is made the first time the stream
/// waits for window and reset each time it waits again after progress, never per frame.
///
/// A stream the client resets before its response ended counts against the connection's reset
/// budget ([`RESET_BURST`]).
///
/// Written out as a state machine, as hyper's `H2Stream` is, rather than as an `async fn`: the
/// task then holds the boxed answer or the body being sent, never both, and spawning it or
/// finishing it copies a few hundred bytes instead of kilobytes.
struct Stream<F, B> {
    reply: SendResponse<Bytes>,
    state: StreamState<F, B>,
    svc: Arc<Service>,
    /// The send deadline, made when the stream first waits for window.
    stall: Option<Pin<Box<Sleep>>>,
    /// `stall` runs: the stream waits for window since it last sent.
    stalled: bool,
}

enum StreamState<F, B> {
    /// Waiting for the proxy's answer.
    Answering {
        handling: Pin<Box<F>>,
        /// Fires when the request body is first read and the client waits for a 100.
        continue_wanted: Option<oneshot::Receiver<()>>,
    },
    /// Writing the response body.
    Sending {
        body: B,
        send: SendStream<Bytes>,
        /// A frame taken from the body, waiting for window; `true` when it is the last.
        waiting: Option<(Bytes, bool)>,
    },
    Done,
}

impl<F, B> Stream<F, B> {
    fn new(
        svc: Arc<Service>,
        handling: Pin<Box<F>>,
        continue_wanted: Option<oneshot::Receiver<()>>,
        reply: SendResponse<Bytes>,
    ) -> Self {
        svc.answering.fetch_add(1, Ordering::Relaxed);
        Stream {
            reply,
            state: StreamState::Answering {
                handling,
                continue_wanted,
            },
            svc,
            stall: None,
            stalled: false,
        }
    }
}

impl<F, B> Stream<F, B> {
    /// Leaves [`StreamState::Answering`] for `next`: the stream no longer counts as answering.
    fn answered(&mut self, next: StreamState<F, B>) {
        if matches!(self.state, StreamState::Answering { .. }) {
            self.svc.answering.fetch_sub(1, Ordering::Relaxed);
        }
        self.state = next;
    }
}

impl<F, B> Drop for Stream<F, B> {
    fn drop(&mut self) {
        if matches!(self.state, StreamState::Answering { .. }) {
            self.svc.answering.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl<F, B> Future for Stream<F, B>
where
    F: Future<Output = Response<B>>,
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // Every field is `Unpin`: the answer is boxed.
        let this = self.get_mut();
        loop {
            match &mut this.state {
                StreamState::Answering {
                    handling,
                    continue_wanted,
                } => {
                    // The body is read (by the upstream connection's task) once the request
                    // is on its way: tell the client to send it.
                    if let Some(wanted) = continue_wanted
                        && let Poll::Ready(read) = Pin::new(wanted).poll(cx)
                    {
                        *continue_wanted = None;
                        if read.is_ok() {
                            let mut cont = Response::new(());
                            *cont.status_mut() = StatusCode::CONTINUE;
                            if let Err(e) = this.reply.send_informational(cont) {
                                tracing::debug!(error = %e, "sending 100 Continue failed");
                            }
                        }
                    }
                    let Poll::Ready(resp) = handling.as_mut().poll(cx) else {
                        // A client that resets the stream cancels the request: dropping
                        // `handling` drops the upstream exchange with it.
                        return match this.reply.poll_reset(cx) {
                            Poll::Ready(reset) => {
                                if reset.is_ok() {
                                    this.svc.client_reset();
                                }
                                this.answered(StreamState::Done);
                                Poll::Ready(())
                            }
                            Poll::Pending => Poll::Pending,
                        };
                    };
                    let next = match respond(&mut this.reply, resp) {
                        Some((body, send)) => StreamState::Sending {
                            body,
                            send,
                            waiting: None,
                        },
                        None => StreamState::Done,
                    };
                    this.answered(next);
                }
                StreamState::Sending {
                    body,
                    send,
                    waiting,
                } => {
                    let mut window = Window {
                        stall: &mut this.stall,
                        stalled: &mut this.stalled,
                        send_timeout: this.svc.send_timeout,
                    };
                    match ready!(poll_pipe(body, send, waiting, &mut window, cx)) {
                        Ok(Sent::Ended) => {}
                        Ok(Sent::ClientReset) => this.svc.client_reset(),
                        Err(e) => tracing::debug!(error = %e, "sending the response body failed"),
                    }
                    // The body is dropped here: the request is recorded.
                    this.state = StreamState::Done;
                }
                StreamState::Done => return Poll::Ready(()),
            }
        }
    }
}

/// Sends the response head; returns the body and its stream when there is a body to send.
fn respond<B: Body>(
    reply: &mut SendResponse<Bytes>,
    resp: Response<B>,
) -> Option<(B, SendStream<Bytes>)> {
    let (mut head, body) = resp.into_parts();
    own_indexed_values(&mut head.headers);
    // The proxy's response filter has removed every connection-specific header already
    // (RFC 9113 §8.2.2); `h2` would refuse the head otherwise.
    if !head.headers.contains_key(DATE)
        && let Some(date) = date_now()
    {
        head.headers.insert(DATE, date);
    }
    let end = body.is_end_stream();
    if !end && let Some(len) = body.size_hint().exact() {
        head.headers
            .entry(CONTENT_LENGTH)
            .or_insert_with(|| HeaderValue::from(len));
    }
    match reply.send_response(Response::from_parts(head, ()), end) {
        Ok(send) if !end => Some((body, send)),
        Ok(_) => None,
        Err(e) => {
            tracing::debug!(error = %e, "sending the response head failed");
            reply.send_reset(Reason::INTERNAL_ERROR);
            None
        }
    }
}

/// The response header fields whose values `h2`'s HPACK encoder never adds to its dynamic
/// table (h2 0.4 `Header::skip_value_index`): their values are not kept past the response.
const NEVER_INDEXED: [HeaderName; 9] = [
    header::AGE,
    header::AUTHORIZATION,
    header::CONTENT_LENGTH,
    header::ETAG,
    header::IF_MODIFIED_SINCE,
    header::IF_NONE_MATCH,
    header::LOCATION,
    header::COOKIE,
    header::SET_COOKIE,
];

/// Gives each response header value that `h2` may keep a buffer of its own.
///
/// A value parsed from the upstream's response is a slice of that upstream connection's read
/// buffer (8 KiB or more), and `h2`'s HPACK encoder keeps every value it indexes in the client
/// connection's dynamic table (RFC 7541 §2.3.2) for as long as the entry lives there, which on
/// a busy connection is its whole life. A `date` that changes each second made a new entry
/// each second, each holding a whole upstream read buffer: about 63 buffers (a 4,096-byte
/// table of 65-byte entries), 0.5 MB per client connection. Copied, an entry holds its value.
/// Values never indexed and sensitive ones are left as they are.
fn own_indexed_values(headers: &mut HeaderMap) {
    for (name, value) in headers.iter_mut() {
        if value.is_sensitive() || NEVER_INDEXED.contains(name) {
            continue;
        }
        // The bytes were a valid value: the copy is too.
        if let Ok(owned) = HeaderValue::from_bytes(value.as_bytes()) {
            *value = owned;
        }
    }
}

/// How a response body's sending ended.
enum Sent {
    /// The body ended, failed, or waited for window past `send_timeout` (the stream is reset).
    Ended,
    /// The client reset the stream first.
    ClientReset,
}

/// A stream's send deadline: how long it may wait for the client's flow-control window.
struct Window<'a> {
    stall: &'a mut Option<Pin<Box<Sleep>>>,
    stalled: &'a mut bool,
    send_timeout: Duration,
}

impl Window<'_> {
    /// The stream waits for window: starts the deadline if it was not running; `true` once it
    /// has passed.
    fn waiting(&mut self, cx: &mut Context<'_>) -> bool {
        let stall = match self.stall {
            Some(stall) if *self.stalled => stall,
            Some(stall) => {
                stall.as_mut().reset(Instant::now() + self.send_timeout);
                stall
            }
            // Made once per stream, and only for a stream that waits for its client.
            None => self
                .stall
                .insert(Box::pin(tokio::time::sleep(self.send_timeout))),
        };
        *self.stalled = true;
        stall.as_mut().poll(cx).is_ready()
    }

    /// Window came: the deadline stops.
    fn progressed(&mut self) {
        *self.stalled = false;
    }
}

/// Writes `body` to the stream as the client's flow-control window opens, until the body ends,
/// fails (the stream is reset with INTERNAL_ERROR), waits for window past `send_timeout` (the
/// stream is reset with CANCEL) or the client resets the stream.
///
/// As hyper does: the next frame is taken from the body only once the one before has been
/// handed to `h2`, and a frame waits for at least one byte of window first. `h2` never sends
/// past the window. Unlike hyper, a body frame is handed over in pieces of at most one HTTP/2
/// frame (16 KiB), each after window for the one before: what `h2` holds for one stream is at
/// most one piece, and window coming for the stream means the client took the piece before.
fn poll_pipe<B>(
    body: &mut B,
    send: &mut SendStream<Bytes>,
    waiting: &mut Option<(Bytes, bool)>,
    window: &mut Window<'_>,
    cx: &mut Context<'_>,
) -> Poll<Result<Sent, h2::Error>>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    loop {
        if let Poll::Ready(reason) = send.poll_reset(cx) {
            return Poll::Ready(reason.map(|r| {
                tracing::debug!(reason = ?r, "client reset the stream");
                Sent::ClientReset
            }));
        }
        if let Some((_, last)) = waiting {
            let last = *last;
            while send.capacity() == 0 {
                match send.poll_capacity(cx) {
                    Poll::Ready(Some(Ok(_))) => {}
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                    Poll::Ready(None) => return Poll::Ready(Ok(Sent::Ended)),
                    Poll::Pending => {
                        if window.waiting(cx) {
                            tracing::debug!("no window from the client for send_timeout");
                            send.send_reset(Reason::CANCEL);
                            return Poll::Ready(Ok(Sent::Ended));
                        }
                        return Poll::Pending;
                    }
                }
            }
            window.progressed();
            if let Some((mut data, _)) = waiting.take() {
                if data.len() > MAX_FRAME_SIZE as usize {
                    // One frame at a time: the next piece gets window only once this one has
                    // been sent, so window given to the stream is the client taking bytes,
                    // which is what the send deadline waits for.
                    let piece = data.split_to(MAX_FRAME_SIZE as usize);
                    send.send_data(piece, false)?;
                    send.reserve_capacity(1);
                    *waiting = Some((data, last));
                    continue;
                }
                send.send_data(data, last)?;
            }
            if last {
                return Poll::Ready(Ok(Sent::Ended));
            }
            continue;
        }
        match ready!(Pin::new(&mut *body).poll_frame(cx)) {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    let last = body.is_end_stream();
                    if data.is_empty() {
                        send.send_data(data, last)?;
                        if last {
                            return Poll::Ready(Ok(Sent::Ended));
                        }
                    } else {
                        // One byte claimed, not the frame's length: a claim on the connection
                        // window held by a stream that waits would starve the others
                        // (hyperium/hyper#4003). `h2` raises it to what is queued.
                        send.reserve_capacity(1);
                        *waiting = Some((data, last));
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        send.reserve_capacity(0);
                        send.send_trailers(trailers)?;
                        return Poll::Ready(Ok(Sent::Ended));
                    }
                }
            },
            Some(Err(e)) => {
                tracing::debug!(error = %e, "response body failed");
                send.send_reset(Reason::INTERNAL_ERROR);
                return Poll::Ready(Ok(Sent::Ended));
            }
            None => {
                send.send_data(Bytes::new(), true)?;
                return Poll::Ready(Ok(Sent::Ended));
            }
        }
    }
}

/// The `Date` header for now (RFC 9110 §6.6.1), formatted once a second per thread.
fn date_now() -> Option<HeaderValue> {
    use std::cell::RefCell;
    thread_local! {
        static DATE: RefCell<(u64, Option<HeaderValue>)> = const { RefCell::new((0, None)) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, value)| {
        if *at != secs || value.is_none() {
            *at = secs;
            *value = HeaderValue::try_from(httpdate::fmt_http_date(now)).ok();
        }
        value.clone()
    })
}

/// Reads the start of a cleartext connection to tell h2c by prior knowledge (the 24-byte
/// preface) from HTTP/1.1, stopping at the first byte that differs. Returns whether it is h2c
/// and the connection with the bytes read put back in front.
pub async fn sniff_preface<T: AsyncRead + Unpin>(mut io: T) -> io::Result<(bool, Rewind<T>)> {
    let mut start = [0u8; 24];
    let mut len = 0;
    while len < start.len() && start[..len] == PREFACE[..len] {
        let n = io.read(&mut start[len..]).await?;
        if n == 0 {
            break;
        }
        len += n;
    }
    let h2c = start == *PREFACE;
    Ok((
        h2c,
        Rewind {
            start,
            pos: 0,
            len,
            inner: io,
        },
    ))
}

/// A connection whose first bytes, already read, are read again.
pub struct Rewind<T> {
    start: [u8; 24],
    pos: usize,
    len: usize,
    inner: T,
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.len {
            let n = (this.len - this.pos).min(buf.remaining());
            buf.put_slice(&this.start[this.pos..this.pos + n]);
            this.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The most [`Coalesced`] gathers before it writes on: a TLS record's largest plaintext
/// (RFC 8446 §5.1), so that a full batch is one record.
pub const COALESCE_BYTES: usize = 16 * 1024;

/// A connection whose writes are gathered during a poll of its [`Connection`] and written out
/// as one at the end of it (or as soon as [`COALESCE_BYTES`] are waiting).
///
/// `h2` writes a DATA frame's payload straight from its `Bytes`, keeps only one such frame at a
/// time, and flushes its I/O before it takes the next: over TLS, each small response became a
/// TLS record and a system call of its own (ten 1 KiB answers on a connection: ten records and
/// ten `writev`). Gathered, what `h2` writes in one poll goes out as one record and one system
/// call. A flush from `h2` below the cap is left to the end of the poll, which
/// [`Connection`] ends with [`Coalesced::poll_write_out`] whenever it is pending; a shutdown
/// writes everything first.
///
/// `h2` holds one handle and the connection another: they share the I/O behind a lock that is
/// only ever taken by the connection's own task, one call at a time. The cost is one copy of
/// what is written. The buffer is released once written: an idle connection keeps none. A
/// write is taken whole when the buffer has room (it may pass [`COALESCE_BYTES`] by at most one
/// write); when the buffer is full, what it holds is written first, and a write waits while
/// the connection cannot take it, so the client's pace still holds the sender back.
pub struct Coalesced<T>(Arc<Mutex<Gathered<T>>>);

struct Gathered<T> {
    inner: T,
    buf: Vec<u8>,
    /// Bytes at the front of `buf` already written.
    written: usize,
    /// Written to `inner` but not yet flushed through it (a TLS stream keeps the records it
    /// could not send): the next write-out flushes even with nothing gathered.
    unflushed: bool,
}

impl<T> Clone for Coalesced<T> {
    fn clone(&self) -> Self {
        Coalesced(Arc::clone(&self.0))
    }
}

impl<T> Coalesced<T> {
    /// Gathers the writes made to `inner`.
    fn new(inner: T) -> Coalesced<T> {
        Coalesced(Arc::new(Mutex::new(Gathered {
            inner,
            buf: Vec::new(),
            written: 0,
            unflushed: false,
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Gathered<T>> {
        // Never poisoned in practice (nothing panics while it is held); a poisoned lock still
        // holds a usable connection.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl<T: AsyncWrite + Unpin> Coalesced<T> {
    /// Writes out what is gathered and flushes the connection: the end of a poll.
    pub fn poll_write_out(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut g = self.lock();
        if g.buf.is_empty() && !g.unflushed {
            return Poll::Ready(Ok(()));
        }
        g.poll_drain_and_flush(cx)
    }
}

impl<T: AsyncWrite + Unpin> Gathered<T> {
    /// Writes out what is gathered; the buffer is released once it is all written.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
            self.unflushed = true;
        }
        self.buf = Vec::new();
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    /// Writes out what is gathered, then flushes the connection under it.
    fn poll_drain_and_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        self.unflushed = false;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesced<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.lock().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesced<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(data)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut g = self.lock();
        if g.buf.len() >= COALESCE_BYTES {
            ready!(g.poll_drain(cx))?;
        }
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if g.buf.is_empty() && len >= COALESCE_BYTES {
            // Nothing to gather it with: written as it is, without a copy.
            let n = ready!(Pin::new(&mut g.inner).poll_write_vectored(cx, bufs))?;
            g.unflushed = true;
            return Poll::Ready(Ok(n));
        }
        if g.buf.capacity() == 0 {
            g.buf.reserve(COALESCE_BYTES.max(len));
        }
        for b in bufs {
            g.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut g = self.lock();
        if g.buf.is_empty() {
            ready!(Pin::new(&mut g.inner).poll_flush(cx))?;
            g.unflushed = false;
            return Poll::Ready(Ok(()));
        }
        if g.buf.len() < COALESCE_BYTES {
            // Left for the end of the connection's poll.
            return Poll::Ready(Ok(()));
        }
        g.poll_drain_and_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut g = self.lock();
        ready!(g.poll_drain(cx))?;
        Pin::new(&mut g.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The inner connection of [`Coalesced`] in tests: records each write it takes, and takes
    /// none while `blocked`; its flush cannot finish while `blocked` or `flush_blocked` (a TLS
    /// stream holding records the socket cannot take yet).
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
        flushes: usize,
        shut: bool,
        blocked: bool,
        flush_blocked: bool,
    }

    impl AsyncRead for Recorder {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            if this.blocked {
                return Poll::Pending;
            }
            this.writes.push(data.to_vec());
            Poll::Ready(Ok(data.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            if this.blocked || this.flush_blocked {
                return Poll::Pending;
            }
            this.flushes += 1;
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            this.shut = true;
            Poll::Ready(Ok(()))
        }
    }

    fn write(io: &mut Coalesced<Recorder>, cx: &mut Context<'_>, data: &[u8]) -> Poll<usize> {
        Pin::new(io).poll_write(cx, data).map(|r| r.unwrap())
    }

    fn flush(io: &mut Coalesced<Recorder>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(io).poll_flush(cx).map(|r| r.unwrap())
    }

    #[test]
    fn the_writes_of_one_poll_go_out_as_one_at_its_end() {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let conn = Coalesced::new(Recorder::default());
        let mut io = conn.clone();
        // One poll of the connection: three frames, each flushed, as `h2` does.
        for frame in [&b"head"[..], b"data-1", b"data-2"] {
            assert_eq!(write(&mut io, &mut cx, frame), Poll::Ready(frame.len()));
            assert_eq!(flush(&mut io, &mut cx), Poll::Ready(()));
        }
        assert!(
            conn.lock().inner.writes.is_empty(),
            "nothing is written during the poll"
        );
        assert_eq!(conn.lock().inner.flushes, 0);
        // The end of the poll: one write, one flush.
        assert!(matches!(conn.poll_write_out(&mut cx), Poll::Ready(Ok(()))));
        assert_eq!(conn.lock().inner.writes, [b"headdata-1data-2".to_vec()]);
        assert_eq!(conn.lock().inner.flushes, 1);
        assert_eq!(
            conn.lock().buf.capacity(),
            0,
            "the buffer is released once written"
        );
        // Nothing gathered: the end of a poll writes nothing; a flush passes straight through.
        assert!(matches!(conn.poll_write_out(&mut cx), Poll::Ready(Ok(()))));
        assert_eq!(conn.lock().inner.flushes, 1);
        assert_eq!(flush(&mut io, &mut cx), Poll::Ready(()));
        assert_eq!(conn.lock().inner.flushes, 2);
        // A client that takes nothing: the end of the poll waits, and writes once it can.
        assert_eq!(write(&mut io, &mut cx, b"more"), Poll::Ready(4));
        conn.lock().inner.blocked = true;
        assert!(conn.poll_write_out(&mut cx).is_pending());
        conn.lock().inner.blocked = false;
        assert!(matches!(conn.poll_write_out(&mut cx), Poll::Ready(Ok(()))));
        assert_eq!(conn.lock().inner.writes[1], b"more");
    }

    #[test]
    fn a_flush_the_connection_could_not_finish_is_finished_at_the_next_poll_end() {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        // Rows: how the bytes went in (gathered, or a large write passed straight through).
        for len in [10, COALESCE_BYTES] {
            let conn = Coalesced::new(Recorder::default());
            let mut io = conn.clone();
            assert_eq!(write(&mut io, &mut cx, &vec![3u8; len]), Poll::Ready(len));
            conn.lock().inner.flush_blocked = true;
            assert!(conn.poll_write_out(&mut cx).is_pending(), "{len}");
            assert_eq!(
                conn.lock().inner.writes.len(),
                1,
                "{len}: written, not flushed"
            );
            // Woken when the socket can take more: nothing is gathered, but the flush is owed.
            conn.lock().inner.flush_blocked = false;
            assert!(matches!(conn.poll_write_out(&mut cx), Poll::Ready(Ok(()))));
            assert_eq!(conn.lock().inner.flushes, 1, "{len}");
            // Owed no longer: the next end of a poll with nothing gathered does nothing.
            assert!(matches!(conn.poll_write_out(&mut cx), Poll::Ready(Ok(()))));
            assert_eq!(conn.lock().inner.flushes, 1, "{len}");
        }
    }

    #[test]
    fn a_full_buffer_is_written_before_more_is_taken_and_waits_for_the_client() {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut io = Coalesced::new(Recorder::default());
        let frame = vec![7u8; 5000];
        for _ in 0..4 {
            assert_eq!(write(&mut io, &mut cx, &frame), Poll::Ready(5000));
        }
        assert!(
            io.lock().inner.writes.is_empty(),
            "20,000 bytes: one write over the cap"
        );
        // Over the cap: the batch goes first; a client that takes nothing holds the write back.
        io.lock().inner.blocked = true;
        assert_eq!(write(&mut io, &mut cx, &frame), Poll::Pending);
        assert_eq!(
            io.lock().buf.len(),
            20_000,
            "nothing is taken while the batch cannot go"
        );
        assert_eq!(
            flush(&mut io, &mut cx),
            Poll::Pending,
            "a flush over the cap writes"
        );
        io.lock().inner.blocked = false;
        assert_eq!(write(&mut io, &mut cx, &frame), Poll::Ready(5000));
        assert_eq!(io.lock().inner.writes.len(), 1);
        assert_eq!(io.lock().inner.writes[0].len(), 20_000);
        assert_eq!(io.lock().buf.len(), 5000);
    }

    #[test]
    fn a_large_write_with_nothing_gathered_is_not_copied_and_shutdown_writes_all() {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut io = Coalesced::new(Recorder::default());
        let large = vec![1u8; COALESCE_BYTES];
        assert_eq!(write(&mut io, &mut cx, &large), Poll::Ready(COALESCE_BYTES));
        assert_eq!(io.lock().inner.writes.len(), 1, "written through");
        assert_eq!(io.lock().buf.capacity(), 0);
        assert_eq!(write(&mut io, &mut cx, b"goaway"), Poll::Ready(6));
        assert_eq!(
            flush(&mut io, &mut cx),
            Poll::Ready(()),
            "left for the end of the poll"
        );
        assert_eq!(io.lock().inner.writes.len(), 1);
        let shut = Pin::new(&mut io).poll_shutdown(&mut cx);
        assert!(matches!(shut, Poll::Ready(Ok(()))));
        assert_eq!(io.lock().inner.writes[1], b"goaway");
        assert!(io.lock().inner.shut);
    }

    /// A response head whose values are slices of `read_buffer`, as hyper's upstream client
    /// makes them: `date` (indexed by HPACK, a new value each second), `server` and a custom
    /// field (indexed), `content-length` and `etag` (never indexed).
    fn upstream_head(read_buffer: &Bytes, date: usize) -> Response<()> {
        let text = std::str::from_utf8(read_buffer).unwrap();
        let slice = |needle: &str| {
            let at = text.find(needle).unwrap();
            HeaderValue::from_maybe_shared(read_buffer.slice(at..at + needle.len())).unwrap()
        };
        let mut resp = Response::new(());
        let headers = resp.headers_mut();
        headers.insert(DATE, slice(&format!("Tue, 01 Dec 2026 10:00:0{date} GMT")));
        headers.insert(header::SERVER, slice("nginx"));
        headers.insert("x-served-by", slice("edge-7"));
        headers.insert(header::ETAG, slice("\"abc\""));
        resp
    }

    #[tokio::test]
    async fn hpack_keeps_no_upstream_read_buffer_past_the_response() {
        // A client connection that lives across several `date` values: each one is a new entry
        // in the server's HPACK table. The upstream's read buffers must be free once each
        // response has been sent.
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move {
            let mut conn = h2::server::handshake(server_io).await.unwrap();
            let mut buffers = Vec::new();
            for date in 0..3 {
                let (_req, mut reply) = conn.accept().await.unwrap().unwrap();
                let mut text =
                    format!("Tue, 01 Dec 2026 10:00:0{date} GMT nginx edge-7 \"abc\"").into_bytes();
                text.resize(8192, b' ');
                let read_buffer = Bytes::from(text);
                let body = http_body_util::Empty::<Bytes>::new();
                let resp = upstream_head(&read_buffer, date).map(|()| body);
                assert!(respond(&mut reply, resp).is_none());
                buffers.push(read_buffer);
            }
            // Serve on until the client is done, so that every head has been encoded.
            tokio::spawn(async move { while conn.accept().await.is_some() {} });
            buffers
        });
        let (mut client, conn) = h2::client::handshake(client_io).await.unwrap();
        tokio::spawn(conn);
        for date in 0..3 {
            let (resp, _) = client.send_request(Request::new(()), true).unwrap();
            let resp = resp.await.unwrap();
            let want = format!("Tue, 01 Dec 2026 10:00:0{date} GMT");
            assert_eq!(resp.headers()[DATE], want.as_str());
            assert_eq!(resp.headers()["x-served-by"], "edge-7");
            assert_eq!(resp.headers()[header::ETAG], "\"abc\"");
        }
        for (date, read_buffer) in server.await.unwrap().into_iter().enumerate() {
            // Only the etag (never indexed) could still hold it, and it went with its response.
            assert!(
                read_buffer.try_into_mut().is_ok(),
                "response {date}: the HPACK table still holds the upstream's read buffer"
            );
        }
    }

    #[tokio::test]
    async fn the_preface_is_told_from_http1_and_read_again() {
        let rows: &[(&[u8], bool)] = &[
            (PREFACE, true),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04", true),
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", false),
            (b"PRI * HTTP/1.1\r\n\r\n", false),
            (b"PRI", false),
            (b"", false),
        ];
        for (sent, h2c) in rows {
            let (mut client, server) = tokio::io::duplex(64);
            tokio::io::AsyncWriteExt::write_all(&mut client, sent)
                .await
                .unwrap();
            drop(client);
            let (found, mut io) = sniff_preface(server).await.unwrap();
            assert_eq!(found, *h2c, "{sent:?}");
            let mut again = Vec::new();
            io.read_to_end(&mut again).await.unwrap();
            assert_eq!(again, *sent, "{sent:?} read again");
        }
    }
}
