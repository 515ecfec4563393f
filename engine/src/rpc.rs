//! Request bookkeeping on both ends: outstanding requests and batches on the client,
//! in-order release of results (and server batching) on the server.

use crate::close::ProtocolError;
use bytes::Bytes;
use pushwire_protocol::{ErrorCode, Message, Response, ServerError, Text};
use std::collections::VecDeque;

/// Default bound on requests a connection may have outstanding, on both ends.
pub const DEFAULT_MAX_OUTSTANDING_REQUESTS: usize = 4096;

/// How a request ended, as the server answers it.
pub type RequestResult = Result<Bytes, (ErrorCode, Text)>;

/// The client's view: which requests await a result, oldest first.
#[derive(Debug, Default)]
pub(crate) struct OutstandingRequests {
    ids: VecDeque<u64>,
    next_id: u64,
}

impl OutstandingRequests {
    pub fn allocate_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub fn push(&mut self, id: u64) {
        self.ids.push_back(id);
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Checks that a result answers the oldest outstanding request and retires it.
    pub fn complete(&mut self, id: u64) -> Result<(), ProtocolError> {
        match self.ids.front() {
            Some(&front) if front == id => {
                self.ids.pop_front();
                Ok(())
            }
            other => Err(ProtocolError::ResultOutOfOrder {
                got: id,
                expected: other.copied(),
            }),
        }
    }

    /// Every outstanding id, oldest first, leaving none.
    pub fn drain(&mut self) -> impl Iterator<Item = u64> + '_ {
        self.ids.drain(..)
    }
}

#[derive(Debug)]
struct PendingResult {
    request_id: u64,
    result: Option<RequestResult>,
    /// The batch the request came in, while its results must be held together.
    held_by: Option<u64>,
}

/// The server's view: results leave strictly in request order, and a batch committed
/// with `server_batching` leaves all at once.
///
/// Calling contract: `begin_request` for every request in arrival order, `answer` in
/// any order, then `release` to move every releasable result into the outbound queue.
#[derive(Debug)]
pub(crate) struct ResultQueue {
    pending: VecDeque<PendingResult>,
    max_outstanding: usize,
    open_batch: Option<u64>,
    next_batch: u64,
    /// Injected fault: release the n-th result twice.
    #[cfg(all(feature = "fault-injection", debug_assertions))]
    pub(crate) answer_twice: Option<(u64, u64)>,
}

impl ResultQueue {
    pub fn new(max_outstanding: usize) -> Self {
        Self {
            pending: VecDeque::new(),
            max_outstanding,
            open_batch: None,
            next_batch: 0,
            #[cfg(all(feature = "fault-injection", debug_assertions))]
            answer_twice: None,
        }
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Gives back the queue's capacity if no request is pending.
    pub fn release_idle_capacity(&mut self) {
        if self.pending.is_empty() {
            self.pending = VecDeque::new();
        }
    }

    /// Bytes of capacity the queue holds.
    pub fn capacity_bytes(&self) -> usize {
        self.pending.capacity() * std::mem::size_of::<PendingResult>()
    }

    pub fn begin_batch(&mut self) -> Result<(), ProtocolError> {
        if self.open_batch.is_some() {
            return Err(ProtocolError::NestedBatch);
        }
        self.next_batch += 1;
        self.open_batch = Some(self.next_batch);
        Ok(())
    }

    /// Ends the open batch; without `server_batching` its results are released as
    /// they come, in order.
    pub fn commit_batch(&mut self, server_batching: bool) -> Result<(), ProtocolError> {
        let Some(batch) = self.open_batch.take() else {
            return Err(ProtocolError::Unexpected {
                message: "BatchCommit",
                context: "without BatchBegin",
            });
        };
        if !server_batching {
            for p in self.pending.iter_mut().filter(|p| p.held_by == Some(batch)) {
                p.held_by = None;
            }
        }
        Ok(())
    }

    pub fn begin_request(&mut self, request_id: u64) -> Result<(), ProtocolError> {
        if self.pending.len() >= self.max_outstanding {
            return Err(ProtocolError::TooManyRequests(self.max_outstanding));
        }
        if self.pending.iter().any(|p| p.request_id == request_id) {
            return Err(ProtocolError::DuplicateRequest(request_id));
        }
        self.pending.push_back(PendingResult {
            request_id,
            result: None,
            held_by: self.open_batch,
        });
        Ok(())
    }

    /// Records a result; returns false when no such request is pending (or it was
    /// already answered).
    pub fn answer(&mut self, request_id: u64, result: RequestResult) -> bool {
        match self
            .pending
            .iter_mut()
            .find(|p| p.request_id == request_id && p.result.is_none())
        {
            Some(p) => {
                p.result = Some(result);
                true
            }
            None => false,
        }
    }

    /// Pops every result that may leave now, in request order.
    pub fn release(&mut self, mut emit: impl FnMut(Message)) {
        loop {
            let Some(front) = self.pending.front() else {
                return;
            };
            if front.result.is_none() {
                return;
            }
            let count = match front.held_by {
                None => 1,
                Some(batch) => {
                    if self.open_batch == Some(batch) {
                        return;
                    }
                    let mut members = 0;
                    for p in self.pending.iter().take_while(|p| p.held_by == Some(batch)) {
                        if p.result.is_none() {
                            return;
                        }
                        members += 1;
                    }
                    members
                }
            };
            for p in self.pending.drain(..count) {
                let request_id = p.request_id;
                #[cfg(all(feature = "fault-injection", debug_assertions))]
                if let Some((n, released)) = &mut self.answer_twice {
                    *released += 1;
                    if *released == *n {
                        if let Some(Ok(payload)) = &p.result {
                            emit(Message::Response(Response {
                                request_id,
                                payload: payload.clone(),
                            }));
                        }
                    }
                }
                emit(match p.result.expect("checked above") {
                    Ok(payload) => Message::Response(Response {
                        request_id,
                        payload,
                    }),
                    Err((code, message)) => Message::ServerError(ServerError {
                        request_id,
                        code,
                        message,
                    }),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(messages: &[Message]) -> Vec<u64> {
        messages
            .iter()
            .map(|m| match m {
                Message::Response(r) => r.request_id,
                Message::ServerError(e) => e.request_id,
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn results_leave_in_request_order() {
        let mut q = ResultQueue::new(10);
        for id in 1..=3 {
            q.begin_request(id).unwrap();
        }
        let mut out = Vec::new();
        assert!(q.answer(3, Ok(Bytes::new())));
        assert!(q.answer(2, Err((ErrorCode::Internal, Text::from("x")))));
        q.release(|m| out.push(m));
        assert!(out.is_empty(), "request 1 is not answered yet");
        assert!(q.answer(1, Ok(Bytes::new())));
        q.release(|m| out.push(m));
        assert_eq!(ids(&out), [1, 2, 3]);
        assert!(!q.answer(1, Ok(Bytes::new())), "already released");
    }

    #[test]
    fn server_batching_holds_results_until_the_whole_batch_is_answered() {
        let mut q = ResultQueue::new(10);
        q.begin_batch().unwrap();
        q.begin_request(1).unwrap();
        q.begin_request(2).unwrap();
        q.commit_batch(true).unwrap();
        q.begin_request(3).unwrap();
        let mut out = Vec::new();
        q.answer(1, Ok(Bytes::new()));
        q.answer(3, Ok(Bytes::new()));
        q.release(|m| out.push(m));
        assert!(out.is_empty());
        q.answer(2, Ok(Bytes::new()));
        q.release(|m| out.push(m));
        assert_eq!(ids(&out), [1, 2, 3]);
    }

    #[test]
    fn limits_and_duplicates_are_protocol_errors() {
        let mut q = ResultQueue::new(1);
        q.begin_request(5).unwrap();
        assert_eq!(q.begin_request(6), Err(ProtocolError::TooManyRequests(1)));
        let mut q = ResultQueue::new(5);
        q.begin_request(5).unwrap();
        assert_eq!(q.begin_request(5), Err(ProtocolError::DuplicateRequest(5)));
        assert_eq!(q.begin_batch(), Ok(()));
        assert_eq!(q.begin_batch(), Err(ProtocolError::NestedBatch));
    }

    #[test]
    fn client_detects_results_out_of_order() {
        let mut o = OutstandingRequests::default();
        let (a, b) = (o.allocate_id(), o.allocate_id());
        o.push(a);
        o.push(b);
        assert_eq!(
            o.complete(b),
            Err(ProtocolError::ResultOutOfOrder {
                got: b,
                expected: Some(a)
            })
        );
        assert_eq!(o.complete(a), Ok(()));
        assert_eq!(o.complete(b), Ok(()));
        assert_eq!(o.len(), 0);
    }
}
