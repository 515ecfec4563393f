//! The cluster backplane on Redis: the engine's backplane port
//! ([`pushwire_engine::cluster`]) carried out with redis-rs. The engine decides
//! everything (what to write, what a hole is, when a peer is gone); this module only
//! moves records between the node and Redis.
//!
//! # Keys
//!
//! - `{pw:<node>}:log:<epoch>` — a stream, one entry per record, id `<seq>-0`, field
//!   `r`, trimmed with `MAXLEN ~` [`MAX_LOG_LEN`];
//! - `{pw:<node>}:state:<epoch>` — a hash: `#seq` (the seq it is current at) and one
//!   field per session (`m:<id>`) and run-time group (`g:<id>`), each a record;
//! - `{pw:<node>}:current` — the epoch of the node's current incarnation (so a new
//!   one deletes the old one's keys);
//! - `pw:nodes` — the directory, a hash node → epoch (hex).
//!
//! A node's keys share its hash tag, so each script touches one slot of a Redis
//! Cluster. This first version talks to one Redis: its blocking read covers every
//! peer's stream in one `XREAD`, which on Redis Cluster would be one read per slot.
//!
//! # Tasks
//!
//! A writer task owns one connection: it registers the node when Redis is reachable
//! (telling the node `Up`), then carries out the node's requests in order, appends
//! in batches of one Lua script call each; any error tells the node `Down` and it
//! reconnects with a backoff. A reader task owns a second connection for the
//! blocking `XREAD` over the peers' logs at the positions the node gives.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Wake, Waker};
use std::time::Duration;

use bytes::Bytes;
use pushwire_engine::cluster::{BackplaneInput, BackplaneRequest, ReadPosition, Snapshot};
use pushwire_protocol::Text;
use redis::aio::MultiplexedConnection;
use redis::streams::StreamReadReply;
use redis::{AsyncConnectionConfig, Client, RedisResult, Script, Value};
use tokio::sync::Notify;
use tracing::{info, warn};

use super::{now, ServerHandle};

/// Entries a node's log keeps (approximately: `MAXLEN ~`). A peer cut off for
/// longer than this many records of a node gets a Gap when it reads again.
pub const MAX_LOG_LEN: usize = 100_000;

/// Most appends in one script call.
const MAX_BATCH: usize = 512;

/// How long one blocking read waits for records.
const READ_BLOCK: Duration = Duration::from_millis(250);

/// Appends records and applies their state entries (KEYS: log, state; ARGV: the
/// log's length limit, then per record: seq, record, op (`s` set, `d` delete, `-`
/// none), state key, value). An id not above the log's last is refused by XADD:
/// written before (a retry), so skipped. A state change older than the state is
/// ignored.
const APPEND: &str = r"
local cur = tonumber(redis.call('HGET', KEYS[2], '#seq') or '0')
local i = 2
while i <= #ARGV do
  local seq = tonumber(ARGV[i])
  redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], ARGV[i] .. '-0', 'r', ARGV[i + 1])
  if seq > cur then
    cur = seq
    if ARGV[i + 2] == 's' then
      redis.call('HSET', KEYS[2], ARGV[i + 3], ARGV[i + 4])
    elseif ARGV[i + 2] == 'd' then
      redis.call('HDEL', KEYS[2], ARGV[i + 3])
    end
  end
  i = i + 5
end
redis.call('HSET', KEYS[2], '#seq', cur)
return cur
";

/// Replaces a node's state (KEYS: state, current; ARGV: seq, epoch, then key, value
/// pairs) and names the incarnation current.
const REGISTER: &str = r"
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], '#seq', ARGV[1])
local i = 3
while i <= #ARGV do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  i = i + 2
end
redis.call('SET', KEYS[2], ARGV[2])
return 1
";

/// Removes a directory entry if it still names the epoch (KEYS: directory; ARGV:
/// node, epoch).
const FORGET: &str = r"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return 1
";

const DIRECTORY: &str = "pw:nodes";

fn epoch_hex(epoch: u64) -> String {
    format!("{epoch:016x}")
}

fn log_key(node: &str, epoch: u64) -> String {
    format!("{{pw:{node}}}:log:{}", epoch_hex(epoch))
}

fn state_key(node: &str, epoch: u64) -> String {
    format!("{{pw:{node}}}:state:{}", epoch_hex(epoch))
}

fn current_key(node: &str) -> String {
    format!("{{pw:{node}}}:current")
}

/// Wakes the writer when the node has backplane work.
struct NotifyWaker(Arc<Notify>);

impl Wake for NotifyWaker {
    fn wake(self: Arc<Self>) {
        self.0.notify_one();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.notify_one();
    }
}

/// What the two tasks share.
struct Link {
    client: Client,
    node: Text,
    epoch: u64,
    /// The writer registered the node and Redis answers.
    up: AtomicBool,
    /// Woken when the node has work (its backplane waker).
    work: Arc<Notify>,
    /// Woken when the link comes up.
    came_up: Notify,
    scripts: Scripts,
}

struct Scripts {
    append: Script,
    register: Script,
    forget: Script,
}

/// Starts the writer and reader tasks for a clustered node.
pub(super) fn spawn(
    handle: ServerHandle,
    url: &str,
    node: Text,
    epoch: u64,
) -> RedisResult<Vec<tokio::task::JoinHandle<()>>> {
    let client = Client::open(url)?;
    let work = Arc::new(Notify::new());
    handle.with_node(|n| n.set_backplane_waker(Waker::from(Arc::new(NotifyWaker(work.clone())))));
    let link = Arc::new(Link {
        client,
        node,
        epoch,
        up: AtomicBool::new(false),
        work,
        came_up: Notify::new(),
        scripts: Scripts {
            append: Script::new(APPEND),
            register: Script::new(REGISTER),
            forget: Script::new(FORGET),
        },
    });
    Ok(vec![
        tokio::spawn(writer(handle.clone(), link.clone())),
        tokio::spawn(reader(handle, link)),
    ])
}

async fn connect(link: &Link, response_timeout: Duration) -> RedisResult<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(response_timeout));
    link.client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

async fn writer(handle: ServerHandle, link: Arc<Link>) {
    let mut backoff = Duration::from_millis(100);
    let mut failing = false;
    loop {
        let mut conn = match connect(&link, Duration::from_secs(5)).await {
            Ok(conn) => conn,
            Err(e) => {
                if !failing {
                    warn!("cluster: Redis unreachable ({e}); retrying");
                    failing = true;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        if failing {
            info!("cluster: Redis reachable again");
        }
        handle.with_node(|n| n.handle_backplane(now(), BackplaneInput::Up));
        link.up.store(true, Ordering::Release);
        link.came_up.notify_waiters();
        let error = loop {
            let woken = link.work.notified();
            let requests = handle.with_node(|n| {
                let mut requests = Vec::new();
                while requests.len() < 4 * MAX_BATCH {
                    match n.poll_backplane() {
                        Some(r) => requests.push(r),
                        None => break,
                    }
                }
                requests
            });
            if requests.is_empty() {
                // Nothing to do: wait for work (heartbeats make some every second).
                let _ = tokio::time::timeout(Duration::from_secs(1), woken).await;
                continue;
            }
            if let Err(e) = carry_out(&handle, &link, &mut conn, requests).await {
                break e;
            }
        };
        warn!("cluster: Redis connection lost ({error}); reconnecting");
        failing = true;
        link.up.store(false, Ordering::Release);
        handle.with_node(|n| n.handle_backplane(now(), BackplaneInput::Down));
    }
}

/// Carries out requests in order; consecutive appends go in one script call.
async fn carry_out(
    handle: &ServerHandle,
    link: &Link,
    conn: &mut MultiplexedConnection,
    requests: Vec<BackplaneRequest>,
) -> RedisResult<()> {
    let mut requests = requests.into_iter().peekable();
    while let Some(request) = requests.next() {
        let answer = match request {
            BackplaneRequest::Append { .. } => {
                let mut batch = vec![request];
                while batch.len() < MAX_BATCH
                    && matches!(requests.peek(), Some(BackplaneRequest::Append { .. }))
                {
                    batch.push(requests.next().expect("peeked"));
                }
                Some(append(link, conn, batch).await?)
            }
            BackplaneRequest::Register {
                node,
                epoch,
                seq,
                state,
            } => {
                let previous: Option<String> = redis::cmd("GET")
                    .arg(current_key(node.as_str()))
                    .query_async(conn)
                    .await?;
                if let Some(previous) = previous.filter(|p| *p != epoch_hex(epoch)) {
                    if let Ok(old) = u64::from_str_radix(&previous, 16) {
                        let _: () = redis::cmd("DEL")
                            .arg(log_key(node.as_str(), old))
                            .arg(state_key(node.as_str(), old))
                            .query_async(conn)
                            .await?;
                    }
                }
                let mut invocation = link.scripts.register.prepare_invoke();
                invocation
                    .key(state_key(node.as_str(), epoch))
                    .key(current_key(node.as_str()))
                    .arg(seq)
                    .arg(epoch_hex(epoch));
                for entry in &state {
                    if let Some(value) = &entry.value {
                        invocation.arg(&entry.key).arg(value.as_ref());
                    }
                }
                let _: i64 = invocation.invoke_async(conn).await?;
                let _: () = redis::cmd("HSET")
                    .arg(DIRECTORY)
                    .arg(node.as_str())
                    .arg(epoch_hex(epoch))
                    .query_async(conn)
                    .await?;
                None
            }
            BackplaneRequest::Discover => {
                let entries: HashMap<String, String> = redis::cmd("HGETALL")
                    .arg(DIRECTORY)
                    .query_async(conn)
                    .await?;
                let mut nodes: Vec<(Text, u64)> = entries
                    .into_iter()
                    .filter_map(|(node, epoch)| {
                        Some((Text::from(node), u64::from_str_radix(&epoch, 16).ok()?))
                    })
                    .collect();
                nodes.sort();
                Some(BackplaneInput::Directory(nodes))
            }
            BackplaneRequest::Snapshot { node, epoch } => {
                let entries: HashMap<String, Vec<u8>> = redis::cmd("HGETALL")
                    .arg(state_key(node.as_str(), epoch))
                    .query_async(conn)
                    .await?;
                let snapshot = snapshot_of(entries);
                Some(BackplaneInput::Snapshot {
                    node,
                    epoch,
                    snapshot,
                })
            }
            BackplaneRequest::Forget { node, epoch } => {
                let _: i64 = link
                    .scripts
                    .forget
                    .key(DIRECTORY)
                    .arg(node.as_str())
                    .arg(epoch_hex(epoch))
                    .invoke_async(conn)
                    .await?;
                None
            }
        };
        if let Some(answer) = answer {
            handle.with_node(|n| n.handle_backplane(now(), answer));
        }
    }
    Ok(())
}

/// A state hash as read: `None` when it does not exist (or has no `#seq`).
fn snapshot_of(mut entries: HashMap<String, Vec<u8>>) -> Option<Snapshot> {
    let seq = entries.remove("#seq")?;
    let seq = std::str::from_utf8(&seq).ok()?.parse().ok()?;
    let mut values: Vec<(String, Vec<u8>)> = entries.into_iter().collect();
    // Same inputs, same order: the node's presence notices follow it.
    values.sort();
    Some(Snapshot {
        seq,
        entries: values.into_iter().map(|(_, v)| Bytes::from(v)).collect(),
    })
}

async fn append(
    link: &Link,
    conn: &mut MultiplexedConnection,
    batch: Vec<BackplaneRequest>,
) -> RedisResult<BackplaneInput> {
    let mut invocation = link.scripts.append.prepare_invoke();
    invocation
        .key(log_key(link.node.as_str(), link.epoch))
        .key(state_key(link.node.as_str(), link.epoch))
        .arg(MAX_LOG_LEN);
    let mut last = 0;
    for request in &batch {
        let BackplaneRequest::Append { seq, record, state } = request else {
            unreachable!("a batch of appends")
        };
        last = *seq;
        invocation.arg(*seq).arg(record.as_ref());
        match state {
            Some(entry) => match &entry.value {
                Some(value) => invocation.arg("s").arg(&entry.key).arg(value.as_ref()),
                None => invocation.arg("d").arg(&entry.key).arg(""),
            },
            None => invocation.arg("-").arg("").arg(""),
        };
    }
    let _: i64 = invocation.invoke_async(conn).await?;
    Ok(BackplaneInput::Appended { seq: last })
}

async fn reader(handle: ServerHandle, link: Arc<Link>) {
    loop {
        if !link.up.load(Ordering::Acquire) {
            let came_up = link.came_up.notified();
            if !link.up.load(Ordering::Acquire) {
                let _ = tokio::time::timeout(Duration::from_secs(1), came_up).await;
                continue;
            }
        }
        let mut conn = match connect(&link, READ_BLOCK + Duration::from_secs(5)).await {
            Ok(conn) => conn,
            Err(_) => {
                // The writer reports Redis' absence; just try again.
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        loop {
            let reads = handle.with_node(|n| n.backplane_reads());
            if reads.is_empty() {
                if !link.up.load(Ordering::Acquire) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            match read(&mut conn, &reads).await {
                Ok(inputs) => {
                    if !inputs.is_empty() {
                        handle.with_node(|n| {
                            for input in inputs {
                                n.handle_backplane(now(), input);
                            }
                        });
                    }
                }
                Err(_) => break,
            }
        }
    }
}

/// One blocking read over the peers' logs.
async fn read(
    conn: &mut MultiplexedConnection,
    reads: &[ReadPosition],
) -> RedisResult<Vec<BackplaneInput>> {
    let mut cmd = redis::cmd("XREAD");
    cmd.arg("COUNT")
        .arg(MAX_BATCH)
        .arg("BLOCK")
        .arg(READ_BLOCK.as_millis() as u64)
        .arg("STREAMS");
    let mut peers = HashMap::new();
    for position in reads {
        let key = log_key(position.node.as_str(), position.epoch);
        cmd.arg(&key);
        peers.insert(key, position);
    }
    for position in reads {
        cmd.arg(format!("{}-0", position.after));
    }
    let reply: Option<StreamReadReply> = cmd.query_async(conn).await?;
    let Some(reply) = reply else {
        return Ok(Vec::new());
    };
    let mut inputs = Vec::new();
    for stream in reply.keys {
        let Some(position) = peers.get(&stream.key) else {
            continue;
        };
        let records = stream
            .ids
            .into_iter()
            .filter_map(|entry| {
                let seq = entry.id.split('-').next()?.parse::<u64>().ok()?;
                // An entry without a record field reads as an empty record: the
                // node counts it as one that does not decode (a hole), never skips it.
                let record = match entry.map.get("r") {
                    Some(Value::BulkString(bytes)) => Bytes::copy_from_slice(bytes),
                    _ => Bytes::new(),
                };
                Some((seq, record))
            })
            .collect();
        inputs.push(BackplaneInput::Records {
            node: position.node.clone(),
            epoch: position.epoch,
            records,
        });
    }
    Ok(inputs)
}
