//! `pushwire demo`: the seed tutorial (Figures 1–10) in one process, with a TLS server
//! on a loopback port and three clients, printed as an ordered event log.
//!
//! # Why the log is deterministic
//!
//! Clients receive events concurrently, so printing on arrival would interleave
//! differently on every run. Instead each step is performed, then the demo waits until
//! every client has received everything the step caused, and prints the step's lines
//! in a fixed order: the server's hooks, then alice, bob and carol. "Everything the
//! step caused" is established with a round trip per client: the server answers a
//! ListGroups after handling all that connection's earlier commands and after queueing
//! all events already addressed to it, so once a client's answer is back (the acting
//! client's first), the step's events are in its event stream. Within one
//! participant's lines of a step, events are sorted by kind and text, because the
//! hello service publishes from its own task, concurrently with the batch's own
//! publication. Nothing printed depends on time except the clients' ephemeral ports.

use super::client::queued_event;
use super::output::describe_event;
use super::serve::TUTORIAL_GROUPS as GROUPS;
use super::{development_file, CliError, Exit, DEVELOPMENT_KEY_PASSWORD, DEVELOPMENT_PASSWORD};
use crate::client::{Client, ClientBuilder, ConnectionContext, Event, EventStream, Trust};
use crate::hello::{self, hello_world_service, HELLO_WORLD_SERVICE};
use crate::server::hooks::origin;
use crate::server::{AuthAttempt, AuthDecision, Server, ServerBuilder};
use bytes::Bytes;
use pushwire_engine::hub::{HookContext, PushHooks, Verdict};
use pushwire_protocol::GroupId;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// How long any one wait may take before the demo gives up.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// The whole demo normally takes well under a second.
const DEMO_TIMEOUT: Duration = Duration::from_secs(30);

/// Lines the server side produced during the current step, printed at its end.
#[derive(Clone, Default)]
struct ServerLog(Arc<Mutex<Vec<String>>>);

impl ServerLog {
    fn push(&self, line: String) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(line);
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The seed's Figure 7 (OnSubscribe, OnUnsubscribe, OnPublish, OnSendUserMessage),
/// recorded instead of printed so that the lines come out with their step.
struct RecordingHooks(ServerLog);

fn actor(context: &HookContext<'_>) -> String {
    match context.info {
        Some(info) => info.user_id.to_string(),
        None => "the server".to_owned(),
    }
}

fn ids(groups: &[GroupId]) -> Vec<u32> {
    groups.iter().map(|g| g.0).collect()
}

impl PushHooks for RecordingHooks {
    fn on_subscribe(&mut self, context: &HookContext<'_>, groups: &[GroupId]) -> Verdict {
        self.0.push(format!(
            "{} subscribes for groups {:?}{}",
            actor(context),
            ids(groups),
            origin(context)
        ));
        Verdict::Allow
    }

    fn on_unsubscribe(&mut self, context: &HookContext<'_>, groups: &[GroupId]) -> Verdict {
        self.0.push(format!(
            "{} unsubscribes from groups {:?}{}",
            actor(context),
            ids(groups),
            origin(context)
        ));
        Verdict::Allow
    }

    fn on_publish(
        &mut self,
        context: &HookContext<'_>,
        groups: &[GroupId],
        payload: &Bytes,
    ) -> Verdict {
        self.0.push(format!(
            "{} publishes a message ({}) to groups {:?}{}",
            actor(context),
            String::from_utf8_lossy(payload),
            ids(groups),
            origin(context)
        ));
        Verdict::Allow
    }

    fn on_user_message(
        &mut self,
        context: &HookContext<'_>,
        receiver: &str,
        payload: &Bytes,
    ) -> Verdict {
        self.0.push(format!(
            "{} sends a message ({}) to {receiver}{}",
            actor(context),
            String::from_utf8_lossy(payload),
            origin(context)
        ));
        Verdict::Allow
    }
}

fn say(who: &str, text: &str) {
    println!("{who:<6} | {text}");
}

fn failed(what: impl std::fmt::Display) -> CliError {
    CliError::new(Exit::Failure, format!("demo failed: {what}"))
}

/// Bounds a wait, naming what did not happen.
async fn within<T>(
    what: &str,
    future: impl std::future::Future<Output = T>,
) -> Result<T, CliError> {
    tokio::time::timeout(STEP_TIMEOUT, future)
        .await
        .map_err(|_| CliError::new(Exit::TimedOut, format!("demo timed out waiting for {what}")))
}

/// Orders one participant's events of one step by kind, then text, then groups (see
/// the module documentation).
fn canonical_order(event: &Event) -> (u8, String, Vec<u32>) {
    let (rank, message, groups): (u8, &[u8], &[GroupId]) = match event {
        Event::Subscribed { groups, .. } => (0, b"", groups),
        Event::Unsubscribed { groups, .. } => (1, b"", groups),
        Event::Published {
            groups, message, ..
        } => (2, message, groups),
        Event::UserMessage { message, .. } => (3, message, &[]),
        _ => (4, b"", &[]),
    };
    (
        rank,
        String::from_utf8_lossy(message).into_owned(),
        ids(groups),
    )
}

struct Participant {
    name: &'static str,
    client: Client,
    events: EventStream,
}

struct Demo {
    server: Server,
    port: u16,
    log: ServerLog,
    participants: Vec<Participant>,
    steps: usize,
}

impl Demo {
    fn step(&mut self, title: &str) {
        self.steps += 1;
        println!();
        println!("== {}. {title}", self.steps);
    }

    fn participant(&self, name: &str) -> Result<&Participant, CliError> {
        self.participants
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| failed(format!("{name} is not connected")))
    }

    /// Step 1: the tutorial server (Figures 1, 5, 6 and 9) on an ephemeral port.
    async fn start() -> Result<Self, CliError> {
        let log = ServerLog::default();
        let permits = log.clone();
        let mut builder = ServerBuilder::new()
            // Figure 1: UseSSL with the certificate and its password-protected key.
            .tls_from_pem(
                &development_file("server.cert.pem"),
                &development_file("server.key.pem"),
                Some(DEVELOPMENT_KEY_PASSWORD),
            )
            .map_err(failed)?;
        // Figure 5: AddAChatGroup.
        for (id, description) in GROUPS {
            builder = builder.group(id, description);
        }
        let server = builder
            // Figure 6: every newcomer joins groups 1 and 3.
            .auto_subscribe([1, 3])
            // Figure 7: the push hooks.
            .hooks(RecordingHooks(log.clone()))
            // Figure 9: the hello-world service; say_hello publishes to [2, 3].
            .service(HELLO_WORLD_SERVICE, hello_world_service())
            // OnIsPermitted: the tutorial's password, any user id.
            .authenticator(move |attempt: &AuthAttempt<'_>| {
                if attempt.password == DEVELOPMENT_PASSWORD.as_bytes() {
                    permits.push(format!("{} is permitted (OnIsPermitted)", attempt.user_id));
                    AuthDecision::Permit
                } else {
                    AuthDecision::bad_credentials()
                }
            })
            .bind(([127, 0, 0, 1], 0).into())
            .await
            .map_err(failed)?;
        let port = server
            .local_addr()
            .ok_or_else(|| failed("the server has no local address"))?
            .port();
        let mut demo = Self {
            server,
            port,
            log,
            participants: Vec::new(),
            steps: 0,
        };
        demo.step("The server starts (Figures 1, 5, 6, 9)");
        say(
            "server",
            "UseSSL: certificate certs/server.cert.pem, password-protected key certs/server.key.pem",
        );
        let groups: Vec<String> = GROUPS
            .iter()
            .map(|(id, description)| format!("{id} {description:?}"))
            .collect();
        say("server", &format!("AddAChatGroup: {}", groups.join(", ")));
        say("server", "each new connection joins groups [1, 3]");
        say(
            "server",
            "hosts the hello-world service: say_hello (publishes to [2, 3]), sleep, echo",
        );
        say("server", &format!("listening on 127.0.0.1:{port}"));
        Ok(demo)
    }

    /// A client connects (Figure 2). The first one shows the server's certificate and
    /// decides itself; the others leave the decision to the default (accept exactly
    /// when the chain verified).
    async fn join(&mut self, name: &'static str, show_certificate: bool) -> Result<(), CliError> {
        self.step(&if show_certificate {
            format!(
                "{name} connects over TLS and checks the server's certificate before sending \
                 credentials (Figure 2)"
            )
        } else {
            format!("{name} connects (default check: accept iff the certificate verified)")
        });
        let mut context =
            ConnectionContext::new("127.0.0.1", self.port, name, DEVELOPMENT_PASSWORD);
        // SetVerifyLocation: the development CA; the certificate names "localhost".
        context.trust = Trust::CaFiles(vec![development_file("ca.cert.pem")]);
        context.server_name = Some("localhost".to_owned());
        // The demo ends with the server: its clients do not try to reconnect.
        context.reconnect = None;
        let mut builder = ClientBuilder::new(context);
        if show_certificate {
            // DoSslServerAuthentication: print SessionInfo, trust iff it verified.
            builder = builder.server_authentication(move |authentication| {
                say(name, "server certificate (SessionInfo):");
                for line in authentication.to_string().lines() {
                    say(name, &format!("  {line}"));
                }
                let verified = authentication.verdict.is_verified();
                say(
                    name,
                    if verified {
                        "verified: accepting the server; user id and password go out now"
                    } else {
                        "NOT verified: rejecting the server; no credentials are sent"
                    },
                );
                verified
            });
        }
        let (client, events) = builder.connect().await?;
        self.participants.push(Participant {
            name,
            client,
            events,
        });
        self.settle(Some(name)).await
    }

    /// Waits until every client has the current step's events, then prints them (see
    /// the module documentation). `actor` is the client that acted, if any: its own
    /// commands must have been handled before the others' round trips count.
    async fn settle(&mut self, actor: Option<&str>) -> Result<(), CliError> {
        let order = actor
            .into_iter()
            .chain(self.participants.iter().map(|p| p.name));
        for name in order {
            let participant = self.participant(name)?;
            within(
                &format!("{name}'s round trip"),
                participant.client.list_groups(),
            )
            .await?
            .map_err(failed)?;
        }
        let mut server_lines = self.log.take();
        server_lines.sort();
        for line in server_lines {
            say("server", &line);
        }
        for participant in &mut self.participants {
            let mut events = Vec::new();
            while let Some(event) = queued_event(&mut participant.events) {
                events.push(event);
            }
            events.sort_by_key(canonical_order);
            for event in events {
                say(participant.name, &describe_event(&event));
            }
        }
        Ok(())
    }

    async fn subscribe(&mut self, name: &str, groups: &[u32]) -> Result<(), CliError> {
        self.step(&format!(
            "{name} subscribes to {groups:?} (Push.Subscribe from a client)"
        ));
        let client = &self.participant(name)?.client;
        within("a subscribe", client.subscribe(groups))
            .await?
            .map_err(failed)?;
        self.settle(Some(name)).await
    }

    async fn unsubscribe(&mut self, name: &str, groups: &[u32]) -> Result<(), CliError> {
        self.step(&format!(
            "{name} unsubscribes from {groups:?} (Push.Unsubscribe)"
        ));
        let client = &self.participant(name)?.client;
        within("an unsubscribe", client.unsubscribe(groups))
            .await?
            .map_err(failed)?;
        self.settle(Some(name)).await
    }

    async fn publish(&mut self, name: &str, groups: &[u32], message: &str) -> Result<(), CliError> {
        self.step(&format!(
            "{name} publishes {message:?} to {groups:?} (Push.Publish; each member gets one copy \
             listing its own groups, {name} an echo)"
        ));
        let client = &self.participant(name)?.client;
        within("a publish", client.publish(groups, message.to_owned()))
            .await?
            .map_err(failed)?;
        self.settle(Some(name)).await
    }

    /// Figure 10: a batch of say_hello, a publication, a slow sleep and a user message,
    /// sent in one go.
    async fn batch(&mut self, name: &str, receiver: &str) -> Result<(), CliError> {
        self.step(&format!(
            "{name} batches say_hello(Jack, Smith), a publish to [1, 2], sleep(100) and a user \
             message to {receiver}, then commit_batching(false) and wait_all (Figure 10)"
        ));
        let client = self.participant(name)?.client.clone();
        // Each call queues its command at once, so they join the batch in this order.
        let started = client.start_batching();
        let hello_reply = client.request(hello::SAY_HELLO, hello::say_hello_args("Jack", "Smith"));
        let published = client.publish(&[1, 2], "We are going to call the method Sleep");
        let slept = client.request(hello::SLEEP, hello::sleep_args(100));
        let delivered = client.send_user_message(receiver, format!("A message from {name}"));
        let committed = client.commit_batching(false);
        within("the batch to start", started)
            .await?
            .map_err(failed)?;
        within("the batch to commit", committed)
            .await?
            .map_err(failed)?;
        within("wait_all", client.wait_all()).await?;

        let greeting = within("say_hello", hello_reply).await?.map_err(failed)?;
        say(
            name,
            &format!("say_hello returned: {}", String::from_utf8_lossy(&greeting)),
        );
        within("the publish", published).await?.map_err(failed)?;
        within("sleep", slept).await?.map_err(failed)?;
        say(name, "sleep(100) returned");
        let reached = within("the user message", delivered)
            .await?
            .map_err(failed)?;
        let plural = if reached == 1 { "" } else { "s" };
        say(
            name,
            &format!("the user message to {receiver} reached {reached} connection{plural}"),
        );
        self.settle(Some(name)).await
    }

    /// A client leaves without unsubscribing: the server unsubscribes it from every
    /// group, and the members that shared one are told.
    async fn leave(&mut self, name: &str) -> Result<(), CliError> {
        self.step(&format!(
            "{name} disconnects (an implicit unsubscribe from all of {name}'s groups)"
        ));
        let index = self
            .participants
            .iter()
            .position(|p| p.name == name)
            .ok_or_else(|| failed(format!("{name} is not connected")))?;
        let participant = self.participants.remove(index);
        drop(participant.events);
        participant.client.close();
        let reason = within("the close", participant.client.closed()).await?;
        say(name, &format!("closed: {reason}"));
        // The hub drops the connection when the server's task for it ends, which no
        // client can observe by a round trip: poll the server's view instead.
        let handle = self.server.handle();
        within("the server to let go", async {
            while handle.is_online(name) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await?;
        self.settle(None).await
    }

    /// Graceful shutdown: every client is told why its connection ends.
    async fn finish(mut self) -> Result<(), CliError> {
        self.step("The server shuts down gracefully (GoingAway to every client)");
        let participants = std::mem::take(&mut self.participants);
        let still_open = within("the shutdown", self.server.shutdown()).await?;
        for participant in participants {
            drop(participant.events);
            let reason = within("a close", participant.client.closed()).await?;
            say(participant.name, &format!("closed: {reason}"));
        }
        // The disconnects' hook lines race with one another; they add nothing here.
        let _ = self.log.take();
        say(
            "server",
            &format!("stopped; {still_open} connections left open"),
        );
        Ok(())
    }
}

/// Runs the demo; fails if any step does not complete within a few seconds.
pub(super) async fn run() -> Result<(), CliError> {
    println!(
        "pushwire demo: SocketPro's secure-push tutorial (Figures 1-10), a TLS server and \
         three clients in one process."
    );
    println!(
        "After each step, once every client has received its events, the step's lines are \
         printed: server, then alice, bob, carol."
    );
    tokio::time::timeout(DEMO_TIMEOUT, async {
        let mut demo = Demo::start().await?;
        demo.join("alice", true).await?;
        demo.join("bob", false).await?;
        demo.join("carol", false).await?;
        demo.subscribe("carol", &[2]).await?;
        demo.publish("alice", &[1, 2], "Hello from alice").await?;
        demo.publish("bob", &[2, 3], "Hello from bob").await?;
        demo.batch("bob", "ALICE").await?;
        demo.unsubscribe("alice", &[1]).await?;
        demo.leave("carol").await?;
        demo.finish().await
    })
    .await
    .map_err(|_| CliError::new(Exit::TimedOut, "the demo did not finish in time"))??;
    println!();
    println!("demo finished: every step's events arrived");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pushwire_protocol::Sender;

    #[test]
    fn a_step_lists_presence_then_publications_by_text_then_user_messages() {
        let published = |text: &'static str| Event::Published {
            seq: 0,
            sender: Sender::Server,
            groups: vec![GroupId(1)],
            message: Bytes::from_static(text.as_bytes()),
        };
        let mut events = [
            Event::UserMessage {
                seq: 1,
                sender: Sender::Server,
                message: Bytes::from_static(b"a"),
            },
            published("We are going to call the method Sleep"),
            published("Say hello from Jack Smith"),
            Event::Subscribed {
                seq: 4,
                sender: Sender::Server,
                groups: vec![GroupId(2)],
            },
        ];
        events.sort_by_key(canonical_order);
        let kinds: Vec<String> = events.iter().map(describe_event).collect();
        assert!(kinds[0].starts_with("Subscribe"), "{kinds:?}");
        assert!(kinds[1].ends_with("Say hello from Jack Smith"), "{kinds:?}");
        assert!(kinds[2].ends_with("call the method Sleep"), "{kinds:?}");
        assert!(kinds[3].starts_with("User message"), "{kinds:?}");
    }
}
