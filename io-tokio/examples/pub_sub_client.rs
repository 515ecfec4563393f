//! The client of the seed tutorial, step by step: a connection context trusting the
//! development CA and a server-authentication callback that prints SessionInfo
//! (Figure 2), the push event callbacks (Figure 8), and a batch of say_hello, a
//! publication to groups 1 and 2, a slow sleep and a user message (Figure 10).
//!
//! Run it against the `pub_sub_server` example:
//!
//! ```sh
//! cargo run -p pushwire-tokio --example pub_sub_client -- [USER_ID] [RECEIVER]
//! ```
//!
//! USER_ID defaults to `alice`, RECEIVER (who gets the user message) to USER_ID, so a
//! single client shows the message as its own echo. The seed reads both from the
//! console; here they are arguments so the example runs unattended.

use bytes::Bytes;
use pushwire_protocol::{GroupId, Sender};
use pushwire_tokio::client::{ClientBuilder, ConnectionContext, Trust};
use pushwire_tokio::hello::{say_hello_args, sleep_args, SAY_HELLO, SLEEP};
use std::error::Error;
use std::path::PathBuf;
use std::time::Duration;

/// The seed's `ToString(groups)`.
fn groups_to_string(groups: &[GroupId]) -> String {
    let ids: Vec<String> = groups.iter().map(|g| g.0.to_string()).collect();
    format!("[{}]", ids.join(", "))
}

/// The seed's `ToString(messageSender)`.
fn sender_to_string(sender: &Sender) -> String {
    match sender {
        Sender::Server => "sender: the server".to_owned(),
        Sender::Peer(p) => format!(
            "sender: {}, ip address: {}, port: {}, service id: {}, self: {}",
            p.user_id, p.addr, p.port, p.service_id, p.is_self
        ),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let user_id = args.next().unwrap_or_else(|| "alice".to_owned());
    let receiver = args.next().unwrap_or_else(|| user_id.clone());
    let certs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../certs");

    // Figure 2: CConnectionContext("localhost", 20901, user id, "MyPassword").
    let mut cc = ConnectionContext::new("localhost", 20901, user_id.as_str(), "MyPassword");
    // Figure 2: SSL.SetVerifyLocation("ca.cert.pem"): the CA that signed the server.
    cc.trust = Trust::CaFiles(vec![certs.join("ca.cert.pem")]);

    let (client, events) = ClientBuilder::new(cc)
        // Figure 2: DoSslServerAuthentication. Print SessionInfo; returning true
        // (only if the chain verified) lets the user id and password go out.
        .server_authentication(|authentication| {
            println!("{authentication}");
            authentication.verdict.is_verified()
        })
        // Figure 8: Push.OnSubscribe, OnUnsubscribe, OnPublish, OnSendUserMessage.
        .on_subscribe(|sender: &Sender, groups: &[GroupId]| {
            println!("Subscribe for {}", groups_to_string(groups));
            println!("{}", sender_to_string(sender));
            println!();
        })
        .on_unsubscribe(|sender: &Sender, groups: &[GroupId]| {
            println!("Unsubscribe from {}", groups_to_string(groups));
            println!("{}", sender_to_string(sender));
            println!();
        })
        .on_publish(|sender: &Sender, groups: &[GroupId], message: &Bytes| {
            println!("Publish to {}", groups_to_string(groups));
            println!("{}", sender_to_string(sender));
            println!("message = {}", String::from_utf8_lossy(message));
            println!();
        })
        .on_user_message(|sender: &Sender, message: &Bytes| {
            println!("SendUserMessage");
            println!("{}", sender_to_string(sender));
            println!("message = {}", String::from_utf8_lossy(message));
            println!();
        })
        .connect()
        .await?;
    // The callbacks see every event; the stream would only duplicate them (and,
    // unread, eventually hold the connection back).
    drop(events);

    // Figure 10: process multiple requests in batch asynchronously. Each call queues
    // its command at once; the futures yield the results later.
    let started = client.start_batching();
    let hello = client.request(SAY_HELLO, say_hello_args("Jack", "Smith"));
    let published = client.publish(&[1, 2], "We are going to call the method Sleep");
    // The seed sleeps 5000 ms; a second shows the same without the wait.
    let slept = client.request(SLEEP, sleep_args(1000));
    let delivered = client.send_user_message(&receiver, format!("A message from {user_id}"));
    // false: the server may return each result as soon as it is ready.
    client.commit_batching(false).await?;
    started.await?;
    client.wait_all().await;

    // The seed prints say_hello's result in its callback.
    println!("{}", String::from_utf8_lossy(&hello.await?));
    published.await?;
    slept.await?;
    println!(
        "the message to {receiver} reached {} connection(s)",
        delivered.await?
    );

    // Let the pushes that followed the results arrive before closing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.close();
    println!("closed: {}", client.closed().await);
    Ok(())
}
