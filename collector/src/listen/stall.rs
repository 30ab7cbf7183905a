//! The gRPC side's guard against a message that starts and stalls.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// A gRPC request body whose messages may not stall: once a message has
/// begun (its 5-byte header or part of its body has arrived), more of it
/// must arrive within the limit, or the stream fails with
/// `RESOURCE_EXHAUSTED` ("message stalled"). Between messages a stream may
/// be silent as long as it likes (the connection's keepalive watches it).
pub struct StallGuard {
    inner: tonic::body::Body,
    limit: Duration,
    header: usize,
    header_bytes: [u8; 5],
    body_left: u64,
    deadline: Pin<Box<Sleep>>,
}

impl StallGuard {
    pub fn wrap(inner: tonic::body::Body, limit: Duration) -> tonic::body::Body {
        tonic::body::Body::new(Self {
            inner,
            limit,
            header: 0,
            header_bytes: [0; 5],
            body_left: 0,
            deadline: Box::pin(tokio::time::sleep(limit)),
        })
    }

    fn mid_message(&self) -> bool {
        self.header > 0 || self.body_left > 0
    }

    /// Follows the gRPC framing over `data`.
    fn advance(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.body_left > 0 {
                let n = (self.body_left).min(data.len() as u64);
                self.body_left -= n;
                data = &data[n as usize..];
                continue;
            }
            let n = (5 - self.header).min(data.len());
            self.header_bytes[self.header..self.header + n].copy_from_slice(&data[..n]);
            self.header += n;
            data = &data[n..];
            if self.header == 5 {
                let len = u32::from_be_bytes([
                    self.header_bytes[1],
                    self.header_bytes[2],
                    self.header_bytes[3],
                    self.header_bytes[4],
                ]);
                self.body_left = u64::from(len);
                self.header = 0;
            }
        }
    }
}

impl http_body::Body for StallGuard {
    type Data = tonic::codegen::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.advance(data);
                    if this.mid_message() {
                        let limit = this.limit;
                        this.deadline.as_mut().reset(Instant::now() + limit);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending if this.mid_message() => {
                ready!(this.deadline.as_mut().poll(cx));
                metrics::counter!("vantage_ingest_stalled_messages_total").increment(1);
                Poll::Ready(Some(Err(tonic::Status::resource_exhausted(format!(
                    "protocol error: message stalled: no byte of it for {} s; send whole \
                     messages",
                    this.limit.as_secs()
                )))))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
