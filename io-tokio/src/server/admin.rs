//! The admin listener: `/metrics` (Prometheus), `/healthz` and `/connz` over plain
//! HTTP/1.1, for operators and their scrapers.
//!
//! It binds where the operator says (`pushwire serve --admin 127.0.0.1:9090`); there is
//! no authentication, so it belongs on a loopback or management address. One request
//! per connection (`Connection: close`), heads of at most 8 KiB, a 5-second deadline
//! per connection and at most 16 connections at once: a scraper needs no more, and a
//! misbehaving client cannot hold more.

use super::{ConnectionReport, ServerHandle};
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

/// Largest request head read.
const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Time a connection gets to send its request and take the answer.
const DEADLINE: Duration = Duration::from_secs(5);
/// Admin connections served at once; more wait in the accept queue.
const MAX_CONNECTIONS: usize = 16;
/// `/connz` lists at most this many connections unless `limit` says otherwise.
const DEFAULT_CONNZ_LIMIT: usize = 1024;

/// The admin listener could not start.
#[derive(Debug, Error)]
#[error("cannot listen for admin requests on {addr}: {source}")]
pub struct AdminError {
    addr: SocketAddr,
    source: std::io::Error,
}

/// A running admin listener; stops when dropped or [`shutdown`](Self::shutdown).
pub struct AdminServer {
    local_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl AdminServer {
    /// Listens on `addr` and serves `/metrics`, `/healthz` and `/connz` for the
    /// server behind `handle`.
    pub async fn bind(handle: ServerHandle, addr: SocketAddr) -> Result<Self, AdminError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| AdminError { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| AdminError { addr, source })?;
        let task = tokio::spawn(accept_loop(handle, listener));
        Ok(Self { local_addr, task })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops listening (requests being answered are cut).
    pub fn shutdown(self) {}
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(handle: ServerHandle, listener: TcpListener) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!("admin accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            if tokio::time::timeout(DEADLINE, serve_one(&handle, stream))
                .await
                .is_err()
            {
                debug!(%peer, "admin request timed out");
            }
            drop(permit);
        });
    }
}

/// A response: status, content type, body.
struct Response {
    status: &'static str,
    content_type: &'static str,
    body: String,
}

impl Response {
    fn new(status: &'static str, content_type: &'static str, body: String) -> Self {
        Self {
            status,
            content_type,
            body,
        }
    }

    fn text(status: &'static str, body: &str) -> Self {
        Self::new(status, "text/plain; charset=utf-8", format!("{body}\n"))
    }

    fn json(status: &'static str, body: &impl Serialize) -> Self {
        let body = serde_json::to_string_pretty(body).expect("plain data serializes");
        Self::new(status, "application/json", body + "\n")
    }
}

async fn serve_one(handle: &ServerHandle, mut stream: TcpStream) {
    let mut head = Vec::with_capacity(1024);
    let response = loop {
        let mut chunk = [0u8; 1024];
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        head.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {
                let method = request.method.unwrap_or_default();
                let target = request.path.unwrap_or_default();
                let head_only = method == "HEAD";
                let response = route(handle, method, target);
                if head_only {
                    // The length of what a GET would get, without the body.
                    let len = response.body.len();
                    write_response(&mut stream, &response, Some(len)).await;
                    return;
                }
                break response;
            }
            Ok(httparse::Status::Partial) if head.len() < MAX_HEAD_BYTES => continue,
            Ok(httparse::Status::Partial) => {
                break Response::text(
                    "431 Request Header Fields Too Large",
                    "the request head is over 8 KiB",
                )
            }
            Err(e) => break Response::text("400 Bad Request", &format!("malformed request: {e}")),
        }
    };
    write_response(&mut stream, &response, None).await;
}

async fn write_response(stream: &mut TcpStream, response: &Response, head_of: Option<usize>) {
    let len = head_of.unwrap_or(response.body.len());
    // A 405 says which methods the admin pages take.
    let allow = if response.status.starts_with("405") {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let mut out = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {len}\r\n{allow}Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        response.status, response.content_type,
    )
    .into_bytes();
    if head_of.is_none() {
        out.extend_from_slice(response.body.as_bytes());
    }
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
}

fn route(handle: &ServerHandle, method: &str, target: &str) -> Response {
    if method != "GET" && method != "HEAD" {
        return Response::text("405 Method Not Allowed", "only GET and HEAD");
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match path {
        "/metrics" => Response::new(
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            handle.metrics_text(),
        ),
        "/healthz" => healthz(handle),
        "/connz" => match ConnzQuery::parse(query) {
            Ok(query) => Response::json("200 OK", &connz(handle, &query)),
            Err(message) => Response::text("400 Bad Request", &message),
        },
        "/" => Response::text(
            "200 OK",
            "pushwire admin: /metrics (Prometheus), /healthz, /connz?limit=&offset=&user=",
        ),
        _ => Response::text(
            "404 Not Found",
            "no such page; try /metrics, /healthz or /connz",
        ),
    }
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    connections: usize,
}

fn healthz(handle: &ServerHandle) -> Response {
    if handle.is_shutting_down() {
        return Response::json(
            "503 Service Unavailable",
            &Health {
                status: "shutting down",
                connections: handle.connection_count(),
            },
        );
    }
    Response::json(
        "200 OK",
        &Health {
            status: "ok",
            connections: handle.connection_count(),
        },
    )
}

/// `/connz`'s query: `limit`, `offset`, `user` (any case).
#[derive(Debug, PartialEq, Eq)]
struct ConnzQuery {
    limit: usize,
    offset: usize,
    user: Option<String>,
}

impl ConnzQuery {
    fn parse(query: &str) -> Result<Self, String> {
        let mut parsed = Self {
            limit: DEFAULT_CONNZ_LIMIT,
            offset: 0,
            user: None,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let number = || {
                value
                    .parse::<usize>()
                    .map_err(|_| format!("{key} must be a number, not {value:?}"))
            };
            match key {
                "limit" => parsed.limit = number()?,
                "offset" => parsed.offset = number()?,
                // User ids in a query are rarely escaped; `%xx` is not decoded.
                "user" => parsed.user = Some(value.to_lowercase()),
                _ => return Err(format!("unknown parameter {key:?} (limit, offset, user)")),
            }
        }
        Ok(parsed)
    }
}

/// `/connz`: the connections, in the spirit of NATS' endpoint of that name.
#[derive(Serialize)]
struct Connz {
    /// Connections that match (before offset and limit).
    total: usize,
    offset: usize,
    limit: usize,
    connections: Vec<ConnectionEntry>,
}

#[derive(Serialize)]
struct ConnectionEntry {
    session_id: u64,
    user: String,
    ip: String,
    port: u16,
    service: u32,
    groups: Vec<u32>,
    queued_bytes: usize,
    replay_events: usize,
    replay_bytes: usize,
    uptime_seconds: f64,
    congested: bool,
}

impl From<ConnectionReport> for ConnectionEntry {
    fn from(report: ConnectionReport) -> Self {
        Self {
            session_id: report.session.0,
            user: report.user_id.to_string(),
            ip: report.peer.ip().to_string(),
            port: report.peer.port(),
            service: report.service_id,
            groups: report.groups.iter().map(|g| g.0).collect(),
            queued_bytes: report.queued_bytes,
            replay_events: report.replay.0,
            replay_bytes: report.replay.1,
            uptime_seconds: (report.connected_for.as_secs_f64() * 1000.0).round() / 1000.0,
            congested: report.congested,
        }
    }
}

fn connz(handle: &ServerHandle, query: &ConnzQuery) -> Connz {
    let matching: Vec<ConnectionReport> = handle
        .connection_reports()
        .into_iter()
        .filter(|r| {
            query
                .user
                .as_ref()
                .is_none_or(|user| r.user_id.as_str().to_lowercase() == *user)
        })
        .collect();
    Connz {
        total: matching.len(),
        offset: query.offset,
        limit: query.limit,
        connections: matching
            .into_iter()
            .skip(query.offset)
            .take(query.limit)
            .map(ConnectionEntry::from)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connz_queries_parse_and_bad_ones_say_why() {
        assert_eq!(
            ConnzQuery::parse("").unwrap(),
            ConnzQuery {
                limit: DEFAULT_CONNZ_LIMIT,
                offset: 0,
                user: None
            }
        );
        assert_eq!(
            ConnzQuery::parse("limit=2&offset=5&user=Alice").unwrap(),
            ConnzQuery {
                limit: 2,
                offset: 5,
                user: Some("alice".into())
            }
        );
        assert!(ConnzQuery::parse("limit=x")
            .unwrap_err()
            .contains("limit must be a number"));
        assert!(ConnzQuery::parse("sort=cid")
            .unwrap_err()
            .contains("unknown parameter"));
    }
}
