//! The server of the seed tutorial ("SocketPro secure communication and built-in
//! bi-directional message pushes"), step by step: TLS with a password-protected key
//! (Figure 1), three chat groups (Figure 5), every newcomer subscribed to groups 1 and
//! 3 (Figure 6), the push events printed (Figure 7), and the hello-world service whose
//! say_hello publishes to groups 2 and 3 (Figure 9).
//!
//! ```sh
//! cargo run -p pushwire-tokio --example pub_sub_server
//! # in another terminal
//! cargo run -p pushwire-tokio --example pub_sub_client -- alice
//! ```

use bytes::Bytes;
use pushwire_engine::hub::{HookContext, PushHooks, Verdict};
use pushwire_protocol::GroupId;
use pushwire_tokio::hello::{hello_world_service, HELLO_WORLD_SERVICE};
use pushwire_tokio::server::{AuthAttempt, AuthDecision, ServerBuilder};
use std::error::Error;
use std::path::PathBuf;

/// The seed's `CMySocketProPeer` overrides of Figure 7, as push hooks: print each
/// event and let it happen.
struct PrintingHooks;

/// The seed's `UID`: whose connection the event concerns.
fn uid(context: &HookContext<'_>) -> String {
    match context.info {
        Some(info) => info.user_id.to_string(),
        None => "the server".to_owned(),
    }
}

/// The seed's `ToString(groups)`.
fn to_string(groups: &[GroupId]) -> String {
    let ids: Vec<String> = groups.iter().map(|g| g.0.to_string()).collect();
    format!("[{}]", ids.join(", "))
}

impl PushHooks for PrintingHooks {
    fn on_subscribe(&mut self, context: &HookContext<'_>, groups: &[GroupId]) -> Verdict {
        println!(
            "{} subscribes for groups {}",
            uid(context),
            to_string(groups)
        );
        Verdict::Allow
    }

    fn on_unsubscribe(&mut self, context: &HookContext<'_>, groups: &[GroupId]) -> Verdict {
        println!(
            "{} unsubscribes for groups {}",
            uid(context),
            to_string(groups)
        );
        Verdict::Allow
    }

    fn on_publish(
        &mut self,
        context: &HookContext<'_>,
        groups: &[GroupId],
        message: &Bytes,
    ) -> Verdict {
        println!(
            "{} publishes a message ({}) to groups {}",
            uid(context),
            String::from_utf8_lossy(message),
            to_string(groups)
        );
        Verdict::Allow
    }

    fn on_user_message(
        &mut self,
        context: &HookContext<'_>,
        receiver: &str,
        message: &Bytes,
    ) -> Verdict {
        println!(
            "{} sends a message ({}) to {receiver}",
            uid(context),
            String::from_utf8_lossy(message)
        );
        Verdict::Allow
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    // The development certificates: the seed's intermediate.cert.pem and
    // intermediate.key.pem play these parts.
    let certs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../certs");

    let server = ServerBuilder::new()
        // Figure 1: UseSSL(certificate, private key, password of the key).
        .tls_from_pem(
            &certs.join("server.cert.pem"),
            &certs.join("server.key.pem"),
            Some("mypassword"),
        )?
        // Figure 5: OnSettingServer registers the chat groups.
        .group(1, "R&D Department")
        .group(2, "Sales Department")
        .group(3, "Management Department")
        // Figure 6: OnSwitchFrom subscribes every newcomer to groups 1 and 3.
        .auto_subscribe([1, 3])
        // Figure 7: OnSubscribe, OnUnsubscribe, OnPublish, OnSendUserMessage.
        .hooks(PrintingHooks)
        // Figure 9: the hello-world service; its say_hello calls
        // Push.Publish("Say hello from <first> <last>", 2, 3) for the caller.
        .service(HELLO_WORLD_SERVICE, hello_world_service())
        // The tutorial's own authentication (amOwn, OnIsPermitted): any user id with
        // the password MyPassword.
        .authenticator(|attempt: &AuthAttempt<'_>| {
            if attempt.password == b"MyPassword" {
                AuthDecision::Permit
            } else {
                AuthDecision::bad_credentials()
            }
        })
        // Figure 1: Run(20901).
        .bind("127.0.0.1:20901".parse()?)
        .await?;

    println!("listening on 127.0.0.1:20901; press Ctrl-C to stop the application .....");
    tokio::signal::ctrl_c().await?;
    // StopSocketProServer: close every connection with GoingAway, then stop.
    server.shutdown().await;
    Ok(())
}
