//! Cancelling requests over real loopback sockets: before a call starts, while it
//! runs, after its result, inside a batch, by dropping its future, against an older
//! server, and when the connection ends.

use bytes::Bytes;
use pushwire_tokio::client::{
    CancelOutcome, Client, ClientBuilder, ConnectionContext, EventStream, RequestError, Trust,
};
use pushwire_tokio::server::{service_fn, AuthDecision, Call, Cancellation, Server, ServerBuilder};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Waits for a cancellation, at most 10 s.
const WAIT: u32 = 1;
/// Returns its argument at once.
const ECHO: u32 = 2;
/// Sleeps 300 ms, whatever happens, then returns "slept".
const STUBBORN: u32 = 3;

/// What the service saw, in order: "start <payload>", "cancelled <payload>",
/// "finished <payload>".
type Log = Arc<Mutex<Vec<String>>>;

fn lines(log: &Log) -> Vec<String> {
    log.lock().unwrap().clone()
}

async fn start(max_running: usize, version: u16) -> (Server, Log) {
    let log: Log = Arc::default();
    let seen = log.clone();
    let service = service_fn(move |call: Call| {
        let log = seen.clone();
        async move {
            let name = String::from_utf8_lossy(&call.payload).into_owned();
            log.lock().unwrap().push(format!("start {name}"));
            let result = match call.method {
                WAIT => {
                    tokio::select! {
                        () = call.cancellation.cancelled() => {
                            log.lock().unwrap().push(format!("cancelled {name}"));
                            return Cancellation::result();
                        }
                        () = tokio::time::sleep(Duration::from_secs(10)) => Ok(Bytes::new()),
                    }
                }
                ECHO => Ok(call.payload),
                _ => {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok(Bytes::from_static(b"slept"))
                }
            };
            log.lock().unwrap().push(format!("finished {name}"));
            result
        }
    });
    let server = ServerBuilder::new()
        .plaintext()
        .service(1, service)
        .max_running_requests(max_running)
        .max_protocol_version(version)
        .authenticator(|_: &pushwire_tokio::server::AuthAttempt<'_>| AuthDecision::Permit)
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    (server, log)
}

async fn connect(server: &Server, cancel_on_drop: bool) -> (Client, EventStream) {
    let port = server.local_addr().unwrap().port();
    let mut context = ConnectionContext::new("127.0.0.1", port, "alice", "pw");
    context.trust = Trust::Plaintext;
    ClientBuilder::new(context)
        .cancel_on_drop(cancel_on_drop)
        .connect()
        .await
        .unwrap()
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Polls `log` until `line` appears.
async fn logged(log: &Log, line: &str) {
    within(line, async {
        while !lines(log).iter().any(|l| l == line) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

#[tokio::test]
async fn a_call_cancelled_before_it_starts_never_reaches_the_service() {
    let (server, log) = start(1, 3).await;
    let (client, _events) = connect(&server, false).await;
    let first = client.request(WAIT, "first");
    let second = client.request(ECHO, "second");
    logged(&log, "start first").await;
    assert_eq!(
        client.cancel(second.ticket()).await,
        CancelOutcome::SentToServer
    );
    assert_eq!(
        client.cancel(first.ticket()).await,
        CancelOutcome::SentToServer
    );
    assert_eq!(
        within("first", first).await,
        Err(RequestError::Cancelled),
        "stopped while it ran"
    );
    assert_eq!(within("second", second).await, Err(RequestError::Cancelled));
    // A later call still runs: the slot was given back.
    assert_eq!(
        within("third", client.request(ECHO, "third")).await,
        Ok(Bytes::from_static(b"third"))
    );
    assert_eq!(
        lines(&log),
        [
            "start first",
            "cancelled first",
            "start third",
            "finished third"
        ],
        "second never started"
    );
}

#[tokio::test]
async fn a_running_call_sees_the_cancel_and_ends_once_with_cancelled() {
    let (server, log) = start(8, 3).await;
    let (client, _events) = connect(&server, false).await;
    let call = client.request(WAIT, "slow");
    logged(&log, "start slow").await;
    let began = Instant::now();
    assert_eq!(
        client.cancel(call.ticket()).await,
        CancelOutcome::SentToServer
    );
    assert_eq!(within("the call", call).await, Err(RequestError::Cancelled));
    assert!(
        began.elapsed() < Duration::from_secs(2),
        "not the 10 s wait"
    );
    assert_eq!(lines(&log), ["start slow", "cancelled slow"]);
}

#[tokio::test]
async fn a_handler_that_ignores_the_cancel_still_delivers_its_result() {
    let (server, _log) = start(8, 3).await;
    let (client, _events) = connect(&server, false).await;
    let call = client.request(STUBBORN, "stubborn");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        client.cancel(call.ticket()).await,
        CancelOutcome::SentToServer
    );
    assert_eq!(
        within("the call", call).await,
        Ok(Bytes::from_static(b"slept"))
    );
}

#[tokio::test]
async fn a_cancel_after_the_result_has_no_effect() {
    let (server, log) = start(8, 3).await;
    let (client, _events) = connect(&server, false).await;
    let call = client.request(ECHO, "quick");
    let ticket = call.ticket();
    assert_eq!(
        within("the call", call).await,
        Ok(Bytes::from_static(b"quick"))
    );
    assert_eq!(client.cancel(ticket).await, CancelOutcome::NotOutstanding);
    assert_eq!(
        within("the next call", client.request(ECHO, "next")).await,
        Ok(Bytes::from_static(b"next"))
    );
    assert_eq!(
        lines(&log),
        [
            "start quick",
            "finished quick",
            "start next",
            "finished next"
        ]
    );
}

#[tokio::test]
async fn a_cancel_inside_an_uncommitted_batch_removes_the_request_from_it() {
    let (server, log) = start(8, 3).await;
    let (client, _events) = connect(&server, false).await;
    client.start_batching().await.unwrap();
    let a = client.request(ECHO, "a");
    let b = client.request(ECHO, "b");
    let c = client.request(ECHO, "c");
    assert_eq!(
        client.cancel(b.ticket()).await,
        CancelOutcome::RemovedFromBatch
    );
    client.commit_batching(true).await.unwrap();
    assert_eq!(within("b", b).await, Err(RequestError::Cancelled));
    assert_eq!(within("a", a).await, Ok(Bytes::from_static(b"a")));
    assert_eq!(within("c", c).await, Ok(Bytes::from_static(b"c")));
    let ran: Vec<String> = lines(&log)
        .into_iter()
        .filter(|l| l.starts_with("start"))
        .collect();
    assert_eq!(ran, ["start a", "start c"]);
}

#[tokio::test]
async fn dropping_a_request_future_cancels_it_only_when_asked_to() {
    let (server, log) = start(8, 3).await;
    let (eager, _events) = connect(&server, true).await;
    let dropped = eager.request(WAIT, "dropped");
    logged(&log, "start dropped").await;
    drop(dropped);
    logged(&log, "cancelled dropped").await;

    let (patient, _events) = connect(&server, false).await;
    let kept = patient.request(STUBBORN, "kept running");
    logged(&log, "start kept running").await;
    drop(kept);
    logged(&log, "finished kept running").await;
    assert!(!lines(&log).contains(&"cancelled kept running".to_string()));
    // The dropped result was discarded and the connection goes on.
    assert_eq!(
        within("echo", patient.request(ECHO, "after")).await,
        Ok(Bytes::from_static(b"after"))
    );
}

#[tokio::test]
async fn against_an_older_server_a_cancel_ends_the_request_at_once_and_drops_its_result() {
    let (server, log) = start(8, 2).await;
    let (client, _events) = connect(&server, false).await;
    let call = client.request(STUBBORN, "old");
    let next = client.request(ECHO, "next");
    logged(&log, "start old").await;
    let began = Instant::now();
    assert_eq!(
        client.cancel(call.ticket()).await,
        CancelOutcome::EndedLocally
    );
    assert_eq!(within("the call", call).await, Err(RequestError::Cancelled));
    assert!(
        began.elapsed() < Duration::from_millis(250),
        "ended locally, not after the handler's 300 ms"
    );
    assert_eq!(within("next", next).await, Ok(Bytes::from_static(b"next")));
    logged(&log, "finished old").await;
}

#[tokio::test]
async fn a_connection_that_ends_cancels_the_calls_still_running() {
    let (server, log) = start(8, 3).await;
    let (client, _events) = connect(&server, false).await;
    let orphan = client.request(WAIT, "orphan");
    logged(&log, "start orphan").await;
    client.close();
    assert!(matches!(
        within("the orphan", orphan).await,
        Err(RequestError::ConnectionLost(_))
    ));
    logged(&log, "cancelled orphan").await;
}
