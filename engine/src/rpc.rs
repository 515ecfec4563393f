//! Request bookkeeping on both ends: outstanding requests and batches on the client,
//! in-order release of results (and server batching) on the server.

use crate::close::ProtocolError;
use bytes::Bytes;
use pushwire_protocol::{ErrorCode, Message, Response, ServerError, Text};
use std::collections::VecDeque;

/// Default bound on requests a connection may have outstanding, on both ends.
pub const DEFAULT_MAX_OUTSTANDING_REQUESTS: usize = 4096;

/// Default bound on a connection's requests that run at once on the server; the
/// others wait, in order, until a running one answers.
pub const DEFAULT_MAX_RUNNING_REQUESTS: usize = 64;

/// How a request ended, as the server answers it.
pub type RequestResult = Result<Bytes, (ErrorCode, Text)>;

/// The client's view: which requests await a result, oldest first.
#[derive(Debug, Default)]
pub(crate) struct OutstandingRequests {
    ids: VecDeque<Outstanding>,
    next_id: u64,
}

#[derive(Debug, Clone, Copy)]
struct Outstanding {
    id: u64,
    /// Ended for the application already (cancelled on a connection that cannot
    /// tell the server): its result is checked for order and dropped.
    ended: bool,
    /// A Cancel was sent for it.
    cancel_sent: bool,
}

/// What cancelling an outstanding request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cancelling {
    /// Send a Cancel (the first time it is asked for).
    Send,
    /// Nothing to send: a Cancel went before.
    AlreadyAsked,
    /// Not outstanding.
    Unknown,
}

impl OutstandingRequests {
    pub fn allocate_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub fn push(&mut self, id: u64) {
        self.ids.push_back(Outstanding {
            id,
            ended: false,
            cancel_sent: false,
        });
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Checks that a result answers the oldest outstanding request and retires it.
    /// Returns whether the application still waits for it.
    pub fn complete(&mut self, id: u64) -> Result<bool, ProtocolError> {
        match self.ids.front() {
            Some(front) if front.id == id => {
                let wanted = !front.ended;
                self.ids.pop_front();
                Ok(wanted)
            }
            other => Err(ProtocolError::ResultOutOfOrder {
                got: id,
                expected: other.map(|o| o.id),
            }),
        }
    }

    /// Marks `id` as cancelled through a Cancel to the server.
    pub fn cancel_on_server(&mut self, id: u64) -> Cancelling {
        match self.ids.iter_mut().find(|o| o.id == id) {
            None => Cancelling::Unknown,
            // Ended for the application: as good as gone.
            Some(o) if o.ended => Cancelling::Unknown,
            Some(o) if o.cancel_sent => Cancelling::AlreadyAsked,
            Some(o) => {
                o.cancel_sent = true;
                Cancelling::Send
            }
        }
    }

    /// Ends `id` for the application now; its result will be dropped. Returns false
    /// when it is not outstanding or ended already.
    pub fn end_locally(&mut self, id: u64) -> bool {
        match self.ids.iter_mut().find(|o| o.id == id) {
            Some(o) if !o.ended => {
                o.ended = true;
                true
            }
            _ => false,
        }
    }

    /// Every outstanding id the application still waits for, oldest first, leaving
    /// none.
    pub fn drain(&mut self) -> impl Iterator<Item = u64> + '_ {
        self.ids.drain(..).filter(|o| !o.ended).map(|o| o.id)
    }
}

/// Where a request stands on the server.
#[derive(Debug)]
enum CallState {
    /// Received, not yet handed to the application: the connection already runs as
    /// many calls as it may.
    Waiting { method_id: u32, payload: Bytes },
    /// Handed to the application, not answered.
    Running {
        /// The client asked to cancel it and the application was told.
        cancel_signalled: bool,
    },
    /// Answered; waits for earlier results (or its batch) to leave.
    Answered(RequestResult),
}

#[derive(Debug)]
struct PendingResult {
    request_id: u64,
    state: CallState,
    /// The batch the request came in, while its results must be held together.
    held_by: Option<u64>,
}

/// A request the application is to run now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StartedCall {
    pub request_id: u64,
    pub method_id: u32,
    pub payload: Bytes,
}

/// What a Cancel did to the request it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CancelEffect {
    /// It had not started: it is answered `Cancelled` and never runs.
    Dropped,
    /// It runs: the application is to be told (once).
    SignalRunning,
    /// Nothing: it is answered already, was signalled before, or is not pending
    /// (a cancel that crossed its result on the wire).
    None,
}

/// The server's view: results leave strictly in request order, and a batch committed
/// with `server_batching` leaves all at once. At most `max_running` calls of the
/// connection run at once; later ones wait here, in order, where a Cancel drops them
/// before they start.
///
/// Calling contract: `begin_request` for every request in arrival order, then
/// `next_call` until `None` to start what may run; `answer` in any order, `cancel`
/// when the client asks, then `release` to move every releasable result into the
/// outbound queue (and `next_call` again: an answer frees a running slot).
#[derive(Debug)]
pub(crate) struct ResultQueue {
    pending: VecDeque<PendingResult>,
    max_outstanding: usize,
    max_running: usize,
    running: usize,
    /// Index in `pending` before which no request waits to start.
    first_waiting: usize,
    open_batch: Option<u64>,
    next_batch: u64,
    /// Injected fault: release the n-th result twice.
    #[cfg(all(feature = "fault-injection", debug_assertions))]
    pub(crate) answer_twice: Option<(u64, u64)>,
}

impl ResultQueue {
    pub fn new(max_outstanding: usize, max_running: usize) -> Self {
        Self {
            pending: VecDeque::new(),
            max_outstanding,
            max_running: max_running.max(1),
            running: 0,
            first_waiting: 0,
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

    pub fn begin_request(
        &mut self,
        request_id: u64,
        method_id: u32,
        payload: Bytes,
    ) -> Result<(), ProtocolError> {
        if self.pending.len() >= self.max_outstanding {
            return Err(ProtocolError::TooManyRequests(self.max_outstanding));
        }
        if self.pending.iter().any(|p| p.request_id == request_id) {
            return Err(ProtocolError::DuplicateRequest(request_id));
        }
        self.pending.push_back(PendingResult {
            request_id,
            state: CallState::Waiting { method_id, payload },
            held_by: self.open_batch,
        });
        Ok(())
    }

    /// The next waiting request, in arrival order, if a running slot is free; it
    /// counts as running from now on.
    pub fn next_call(&mut self) -> Option<StartedCall> {
        if self.running >= self.max_running {
            return None;
        }
        while let Some(p) = self.pending.get_mut(self.first_waiting) {
            self.first_waiting += 1;
            if matches!(p.state, CallState::Waiting { .. }) {
                let started = CallState::Running {
                    cancel_signalled: false,
                };
                let CallState::Waiting { method_id, payload } =
                    std::mem::replace(&mut p.state, started)
                else {
                    unreachable!("matched above");
                };
                self.running += 1;
                return Some(StartedCall {
                    request_id: p.request_id,
                    method_id,
                    payload,
                });
            }
        }
        None
    }

    /// Records a result of a running request; returns false when no such request
    /// runs (unknown, not started, or already answered).
    pub fn answer(&mut self, request_id: u64, result: RequestResult) -> bool {
        match self
            .pending
            .iter_mut()
            .find(|p| p.request_id == request_id && matches!(p.state, CallState::Running { .. }))
        {
            Some(p) => {
                p.state = CallState::Answered(result);
                self.running -= 1;
                true
            }
            None => false,
        }
    }

    /// The client cancelled `request_id`.
    pub fn cancel(&mut self, request_id: u64) -> CancelEffect {
        let Some(p) = self.pending.iter_mut().find(|p| p.request_id == request_id) else {
            return CancelEffect::None;
        };
        match &mut p.state {
            CallState::Waiting { .. } => {
                p.state = CallState::Answered(Err((
                    ErrorCode::Cancelled,
                    Text::from("cancelled before it started"),
                )));
                CancelEffect::Dropped
            }
            CallState::Running { cancel_signalled } if !*cancel_signalled => {
                *cancel_signalled = true;
                CancelEffect::SignalRunning
            }
            CallState::Running { .. } | CallState::Answered(_) => CancelEffect::None,
        }
    }

    /// Pops every result that may leave now, in request order.
    pub fn release(&mut self, mut emit: impl FnMut(Message)) {
        loop {
            let Some(front) = self.pending.front() else {
                return;
            };
            if !matches!(front.state, CallState::Answered(_)) {
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
                        if !matches!(p.state, CallState::Answered(_)) {
                            return;
                        }
                        members += 1;
                    }
                    members
                }
            };
            self.first_waiting = self.first_waiting.saturating_sub(count);
            for p in self.pending.drain(..count) {
                let request_id = p.request_id;
                let CallState::Answered(result) = p.state else {
                    unreachable!("checked above");
                };
                #[cfg(all(feature = "fault-injection", debug_assertions))]
                if let Some((n, released)) = &mut self.answer_twice {
                    *released += 1;
                    if *released == *n {
                        if let Ok(payload) = &result {
                            emit(Message::Response(Response {
                                request_id,
                                payload: payload.clone(),
                            }));
                        }
                    }
                }
                emit(match result {
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
        let mut q = ResultQueue::new(10, 10);
        for id in 1..=3 {
            q.begin_request(id, 0, Bytes::new()).unwrap();
        }
        while q.next_call().is_some() {}
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
        let mut q = ResultQueue::new(10, 10);
        q.begin_batch().unwrap();
        q.begin_request(1, 0, Bytes::new()).unwrap();
        q.begin_request(2, 0, Bytes::new()).unwrap();
        q.commit_batch(true).unwrap();
        q.begin_request(3, 0, Bytes::new()).unwrap();
        while q.next_call().is_some() {}
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
        let mut q = ResultQueue::new(1, 1);
        q.begin_request(5, 0, Bytes::new()).unwrap();
        assert_eq!(
            q.begin_request(6, 0, Bytes::new()),
            Err(ProtocolError::TooManyRequests(1))
        );
        let mut q = ResultQueue::new(5, 5);
        q.begin_request(5, 0, Bytes::new()).unwrap();
        assert_eq!(
            q.begin_request(5, 0, Bytes::new()),
            Err(ProtocolError::DuplicateRequest(5))
        );
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
        assert_eq!(o.complete(a), Ok(true));
        assert_eq!(o.complete(b), Ok(true));
        assert_eq!(o.len(), 0);
    }

    #[test]
    fn a_request_ended_locally_is_checked_for_order_and_dropped() {
        let mut o = OutstandingRequests::default();
        let (a, b) = (o.allocate_id(), o.allocate_id());
        o.push(a);
        o.push(b);
        assert!(o.end_locally(a));
        assert!(!o.end_locally(a), "once");
        assert_eq!(o.cancel_on_server(a), Cancelling::Unknown, "ended already");
        assert_eq!(o.cancel_on_server(b), Cancelling::Send);
        assert_eq!(o.cancel_on_server(b), Cancelling::AlreadyAsked);
        assert_eq!(o.cancel_on_server(99), Cancelling::Unknown);
        assert!(o.complete(b).is_err(), "a's result still comes first");
        assert_eq!(o.complete(a), Ok(false));
        assert_eq!(o.drain().collect::<Vec<_>>(), [b]);
    }

    fn started(q: &mut ResultQueue) -> Vec<u64> {
        std::iter::from_fn(|| q.next_call())
            .map(|c| c.request_id)
            .collect()
    }

    #[test]
    fn at_most_max_running_calls_run_and_the_rest_start_in_order() {
        let mut q = ResultQueue::new(10, 2);
        for id in 1..=5 {
            q.begin_request(id, id as u32, Bytes::new()).unwrap();
        }
        assert_eq!(started(&mut q), [1, 2]);
        assert!(!q.answer(3, Ok(Bytes::new())), "3 has not started");
        assert!(q.answer(2, Ok(Bytes::new())));
        assert_eq!(started(&mut q), [3]);
        assert!(q.answer(1, Ok(Bytes::new())));
        assert!(q.answer(3, Ok(Bytes::new())));
        let mut out = Vec::new();
        q.release(|m| out.push(m));
        assert_eq!(ids(&out), [1, 2, 3]);
        assert_eq!(started(&mut q), [4, 5]);
    }

    #[test]
    fn a_server_batched_batch_larger_than_the_running_bound_still_completes() {
        let mut q = ResultQueue::new(100, 2);
        q.begin_batch().unwrap();
        for id in 1..=7 {
            q.begin_request(id, 0, Bytes::new()).unwrap();
        }
        q.commit_batch(true).unwrap();
        let mut out = Vec::new();
        let mut ran = Vec::new();
        loop {
            let started = started(&mut q);
            if started.is_empty() {
                break;
            }
            for id in started {
                assert!(q.answer(id, Ok(Bytes::new())));
                ran.push(id);
            }
            q.release(|m| out.push(m));
            if ran.len() < 7 {
                assert!(out.is_empty(), "held until the whole batch is answered");
            }
        }
        assert_eq!(ran, [1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(ids(&out), [1, 2, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn a_cancel_drops_a_waiting_call_signals_a_running_one_once_and_ignores_the_rest() {
        let mut q = ResultQueue::new(10, 1);
        for id in 1..=3 {
            q.begin_request(id, 0, Bytes::new()).unwrap();
        }
        assert_eq!(started(&mut q), [1]);
        assert_eq!(q.cancel(2), CancelEffect::Dropped);
        assert_eq!(q.cancel(2), CancelEffect::None);
        assert_eq!(q.cancel(1), CancelEffect::SignalRunning);
        assert_eq!(q.cancel(1), CancelEffect::None);
        assert_eq!(q.cancel(42), CancelEffect::None);
        assert_eq!(started(&mut q), [], "1 still runs");
        assert!(q.answer(1, Ok(Bytes::from_static(b"done anyway"))));
        assert_eq!(started(&mut q), [3], "2 never runs");
        let mut out = Vec::new();
        q.release(|m| out.push(m));
        assert_eq!(ids(&out), [1, 2]);
        assert!(matches!(&out[0], Message::Response(r) if r.payload == "done anyway"));
        assert!(matches!(
            &out[1],
            Message::ServerError(e) if e.code == ErrorCode::Cancelled
        ));
        assert!(q.answer(3, Ok(Bytes::new())));
        assert_eq!(q.cancel(3), CancelEffect::None, "answered already");
    }

    /// What the model knows of one request.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Model {
        Waiting,
        Running { signalled: bool },
        Answered { cancelled: bool },
    }

    #[derive(Debug, Clone)]
    enum Op {
        Request,
        /// Answers the i-th running request (modulo), cancelled or not.
        Answer(usize, bool),
        /// Cancels the i-th request ever made (modulo), or an unknown id.
        Cancel(usize),
        Batch(bool),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            4 => Just(Op::Request),
            4 => (any::<usize>(), any::<bool>()).prop_map(|(i, c)| Op::Answer(i, c)),
            3 => any::<usize>().prop_map(Op::Cancel),
            1 => any::<bool>().prop_map(Op::Batch),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
            crate::hub::model::proptest_cases()
        ))]

        /// Against a model: at most `max_running` calls run, they start in arrival
        /// order, a cancelled waiting request never starts and ends `Cancelled`, a
        /// running one is signalled at most once, every request is released exactly
        /// once and in request order, and nothing is left once every call answered.
        #[test]
        fn the_result_queue_behaves_like_its_model(
            max_running in 1usize..4,
            ops in proptest::collection::vec(op(), 0..80),
        ) {
            let mut q = ResultQueue::new(1_000, max_running);
            let mut model: Vec<Model> = Vec::new();
            let mut released: Vec<u64> = Vec::new();
            let mut in_batch = false;
            let drain = |q: &mut ResultQueue, model: &mut Vec<Model>, released: &mut Vec<u64>| {
                for call in std::iter::from_fn(|| q.next_call()) {
                    let i = call.request_id as usize - 1;
                    assert_eq!(model[i], Model::Waiting, "only waiting calls start");
                    assert!(
                        model[..i].iter().all(|m| *m != Model::Waiting),
                        "calls start in arrival order"
                    );
                    model[i] = Model::Running { signalled: false };
                }
                let running = model
                    .iter()
                    .filter(|m| matches!(m, Model::Running { .. }))
                    .count();
                assert!(running <= max_running);
                q.release(|m| {
                    let (id, cancelled) = match m {
                        Message::Response(r) => (r.request_id, false),
                        Message::ServerError(e) => (e.request_id, e.code == ErrorCode::Cancelled),
                        other => panic!("{other:?}"),
                    };
                    let i = id as usize - 1;
                    assert_eq!(model[i], Model::Answered { cancelled });
                    assert_eq!(released.last().copied().unwrap_or(0) + 1, id, "in order");
                    released.push(id);
                });
            };
            for op in ops {
                match op {
                    Op::Request => {
                        model.push(Model::Waiting);
                        q.begin_request(model.len() as u64, 0, Bytes::new()).unwrap();
                    }
                    Op::Answer(i, cancelled) => {
                        let running: Vec<usize> = (0..model.len())
                            .filter(|&i| matches!(model[i], Model::Running { .. }))
                            .collect();
                        if !running.is_empty() {
                            let i = running[i % running.len()];
                            let result = if cancelled {
                                Err((ErrorCode::Cancelled, Text::from("stopped")))
                            } else {
                                Ok(Bytes::new())
                            };
                            assert!(q.answer(i as u64 + 1, result));
                            model[i] = Model::Answered { cancelled };
                        }
                    }
                    Op::Cancel(i) => {
                        let id = if model.is_empty() { 9_999 } else { (i % (model.len() + 1)) as u64 + 1 };
                        let expected = match model.get(id as usize - 1) {
                            Some(Model::Waiting) => CancelEffect::Dropped,
                            Some(Model::Running { signalled: false }) => CancelEffect::SignalRunning,
                            _ => CancelEffect::None,
                        };
                        let effect = q.cancel(id);
                        assert_eq!(effect, expected);
                        match effect {
                            CancelEffect::Dropped => {
                                model[id as usize - 1] = Model::Answered { cancelled: true }
                            }
                            CancelEffect::SignalRunning => {
                                model[id as usize - 1] = Model::Running { signalled: true }
                            }
                            CancelEffect::None => {}
                        }
                    }
                    Op::Batch(server_batching) => {
                        if in_batch {
                            q.commit_batch(server_batching).unwrap();
                        } else {
                            q.begin_batch().unwrap();
                        }
                        in_batch = !in_batch;
                    }
                }
                drain(&mut q, &mut model, &mut released);
            }
            // Every call answers; everything leaves.
            if in_batch {
                q.commit_batch(false).unwrap();
            }
            loop {
                drain(&mut q, &mut model, &mut released);
                let Some(i) = model.iter().position(|m| matches!(m, Model::Running { .. })) else {
                    break;
                };
                assert!(q.answer(i as u64 + 1, Ok(Bytes::new())));
                model[i] = Model::Answered { cancelled: false };
            }
            assert_eq!(released.len(), model.len(), "each request released once");
            assert_eq!(q.len(), 0);
        }
    }
}
