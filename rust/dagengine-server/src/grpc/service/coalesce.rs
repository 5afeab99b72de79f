//! A session's replies as they leave the engine: coalesced into few messages.

use std::pin::Pin;

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::Status;

use super::pb;

/// Most replies of a session that leave as one message.
const SESSION_COALESCE: usize = 64;

/// Most bytes of replies coalesced into one message (a reply larger than this still goes
/// out, alone): well under the 4 MiB a gRPC client accepts by default.
pub(super) const SESSION_COALESCE_BYTES: usize = 1 << 20;

/// A session's replies as they leave: whatever is ready when the stream is polled goes out
/// as one message (a client reading many runs' results pays per message, not per byte).
pub(super) struct Coalesced {
    pub(super) rx: mpsc::Receiver<Result<pb::SessionEvents, Status>>,
    pub(super) held: std::collections::VecDeque<Result<pb::SessionEvents, Status>>,
}

impl Stream for Coalesced {
    type Item = Result<pb::SessionReplies, Status>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = &mut *self;
        if this.held.is_empty() {
            let mut ready = Vec::new();
            match this.rx.poll_recv_many(cx, &mut ready, SESSION_COALESCE) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(0) => return Poll::Ready(None),
                Poll::Ready(_) => this.held.extend(ready),
            }
        }
        let mut runs = Vec::new();
        let mut bytes = 0;
        while let Some(Ok(next)) = this.held.front() {
            let size = prost::Message::encoded_len(next) + 8; // + its tag and length
            if !runs.is_empty() && bytes + size > SESSION_COALESCE_BYTES {
                break; // the rest go out in the next message
            }
            bytes += size;
            if let Some(Ok(events)) = this.held.pop_front() {
                runs.push(events);
            }
        }
        if runs.is_empty() {
            // An error is next: it goes out on its own, after the replies before it.
            if let Some(Err(status)) = this.held.pop_front() {
                return Poll::Ready(Some(Err(status)));
            }
        }
        Poll::Ready(Some(Ok(pb::SessionReplies { runs })))
    }
}
