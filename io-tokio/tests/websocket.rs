//! Browsers over real sockets: a WebSocket client (tokio-tungstenite over
//! tokio-rustls, trusting the development CA) talks pushwire in binary messages to a
//! `ServerBuilder` server with WebSocket on, next to a native `Client`: upgrade,
//! Hello, publications both ways, a user message, a refused Origin, the chat page.

mod common;

use common::{cert, next_event};

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use pushwire_engine::credentials::load_root_store;
use pushwire_protocol::{
    ClientOptions, FrameDecoder, FrameLimits, GroupId, Hello, Message, Publish, SendUserMessage,
    Sender, Text, PROTOCOL_VERSION, SUPPORTED_VERSIONS,
};
use pushwire_tokio::client::{Client, ConnectionContext, Event, EventStream, Trust};
use pushwire_tokio::hello::{hello_world_service, HELLO_WORLD_SERVICE};
use pushwire_tokio::server::{AuthDecision, Server, WebConfig};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tokio_tungstenite::WebSocketStream;

async fn start(web: WebConfig) -> Server {
    common::dev_tls_server()
        .group(1, "R&D Department")
        .group(2, "Sales Department")
        .group(3, "Management Department")
        .service(HELLO_WORLD_SERVICE, hello_world_service())
        .authenticator(|attempt: &pushwire_tokio::server::AuthAttempt<'_>| {
            if attempt.password == b"MyPassword" {
                AuthDecision::Permit
            } else {
                AuthDecision::bad_credentials()
            }
        })
        .websocket(web)
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

async fn tls(server: &Server) -> TlsStream<TcpStream> {
    let roots = load_root_store(&[cert("ca.cert.pem")]).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(server.local_addr().unwrap())
        .await
        .unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

type Ws = WebSocketStream<TlsStream<TcpStream>>;

async fn websocket(server: &Server, origin: Option<&str>) -> Result<Ws, WsError> {
    let port = server.local_addr().unwrap().port();
    let mut request = format!("wss://localhost:{port}/")
        .into_client_request()
        .unwrap();
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("Origin", origin.parse().unwrap());
    }
    let stream = tls(server).await;
    tokio_tungstenite::client_async(request, stream)
        .await
        .map(|(ws, _)| ws)
}

/// A pushwire client by hand inside the WebSocket.
struct Browser {
    ws: Ws,
    decoder: FrameDecoder,
    inbox: Vec<Message>,
}

impl Browser {
    async fn send(&mut self, messages: &[Message]) {
        let mut out = BytesMut::new();
        for m in messages {
            m.encode(&mut out);
        }
        self.ws.send(WsMessage::Binary(out.freeze())).await.unwrap();
    }

    /// The next pushwire message matching `pick`; fails after 5 s.
    async fn next<T>(&mut self, mut pick: impl FnMut(&Message) -> Option<T>) -> T {
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Some(i) = self.inbox.iter().position(|m| pick(m).is_some()) {
                    let m = self.inbox.remove(i);
                    return pick(&m).unwrap();
                }
                match self.ws.next().await.expect("websocket ended").unwrap() {
                    WsMessage::Binary(b) => {
                        let mut rest: &[u8] = &b;
                        while !rest.is_empty() {
                            let n = self.decoder.feed(rest);
                            rest = &rest[n..];
                            while let Some(f) = self.decoder.next_frame().unwrap() {
                                self.inbox.push(f.decode().unwrap());
                            }
                        }
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        })
        .await
        .expect("timed out waiting for a pushwire message")
    }
}

fn hello(user: &str) -> Message {
    Message::Hello(Hello {
        min_version: *SUPPORTED_VERSIONS.start(),
        max_version: PROTOCOL_VERSION,
        service_id: HELLO_WORLD_SERVICE,
        options: ClientOptions::default(),
        user_id: Text::from(user),
        password: Bytes::from_static(b"MyPassword"),
        resume: None,
        max_frame_size: None,
    })
}

async fn native(server: &Server, user: &str) -> (Client, EventStream) {
    let addr = server.local_addr().unwrap();
    let mut cc = ConnectionContext::new("localhost", addr.port(), user, "MyPassword");
    cc.trust = Trust::CaFiles(vec![cert("ca.cert.pem")]);
    Client::connect(cc).await.unwrap()
}

#[tokio::test]
async fn browser_and_native_client_exchange_publications_and_user_messages() {
    let server = start(WebConfig::default()).await;
    let ws = websocket(
        &server,
        Some(&format!(
            "https://localhost:{}",
            server.local_addr().unwrap().port()
        )),
    )
    .await
    .expect("same-origin upgrade");
    let mut browser = Browser {
        ws,
        decoder: FrameDecoder::new(FrameLimits::default()),
        inbox: Vec::new(),
    };
    // The Hello in two WebSocket messages.
    let mut hello_bytes = BytesMut::new();
    hello("webby").encode(&mut hello_bytes);
    let (a, b) = hello_bytes.split_at(7);
    browser
        .ws
        .send(WsMessage::Binary(Bytes::copy_from_slice(a)))
        .await
        .unwrap();
    browser
        .ws
        .send(WsMessage::Binary(Bytes::copy_from_slice(b)))
        .await
        .unwrap();
    browser
        .next(|m| matches!(m, Message::Welcome(_)).then_some(()))
        .await;
    browser
        .send(&[Message::Subscribe(pushwire_protocol::Subscribe {
            command_id: 1,
            groups: vec![GroupId(1)],
        })])
        .await;
    browser
        .next(|m| match m {
            Message::Subscribed(s) if s.sender.is_self() => Some(()),
            _ => None,
        })
        .await;

    let (alice, mut alice_events) = native(&server, "alice").await;
    alice.subscribe(&[1]).await.unwrap();
    // The browser sees alice join group 1 (presence).
    let joined = browser
        .next(|m| match m {
            Message::Subscribed(s) => match &s.sender {
                Sender::Peer(p) if p.user_id == "alice" => Some(s.groups.clone()),
                _ => None,
            },
            _ => None,
        })
        .await;
    assert_eq!(joined, [GroupId(1)]);

    // native → browser
    alice.publish(&[1], "hi from native").await.unwrap();
    let got = browser
        .next(|m| match m {
            Message::Published(p) if !p.sender.is_self() => Some(p.payload.clone()),
            _ => None,
        })
        .await;
    assert_eq!(got, Bytes::from("hi from native"));

    // browser → native, a publication and a user message in one WebSocket message
    browser
        .send(&[
            Message::Publish(Publish {
                command_id: 2,
                groups: vec![GroupId(1)],
                payload: Bytes::from_static(b"hi from the browser"),
                compression: None,
            }),
            Message::SendUserMessage(SendUserMessage {
                command_id: 3,
                receiver: Text::from("ALICE"),
                payload: Bytes::from_static(b"psst"),
                compression: None,
            }),
        ])
        .await;
    let (who, text) = next_event(&mut alice_events, |e| match e {
        Event::Published {
            sender: Sender::Peer(p),
            message,
            ..
        } if !p.is_self => Some((p.user_id.to_string(), message.clone())),
        _ => None,
    })
    .await;
    assert_eq!(
        (who.as_str(), text),
        ("webby", Bytes::from("hi from the browser"))
    );
    let dm = next_event(&mut alice_events, |e| match e {
        Event::UserMessage {
            sender: Sender::Peer(p),
            message,
            ..
        } if p.user_id == "webby" => Some(message.clone()),
        _ => None,
    })
    .await;
    assert_eq!(dm, Bytes::from("psst"));
    let reached = browser
        .next(|m| match m {
            Message::UserMessageDelivered(d) => Some(d.connections),
            _ => None,
        })
        .await;
    assert_eq!(reached, 1);

    // native → browser user message, by id without case
    assert_eq!(
        alice
            .send_user_message("WEBBY", "back at you")
            .await
            .unwrap(),
        1
    );
    let got = browser
        .next(|m| match m {
            Message::UserMessage(u) if !u.sender.is_self() => Some(u.payload.clone()),
            _ => None,
        })
        .await;
    assert_eq!(got, Bytes::from("back at you"));

    // A goodbye (pushwire's Close, then the WebSocket close) ends the browser's
    // session: alice sees it leave at once. (A WebSocket close alone is a dropped
    // connection, as a TLS close_notify alone is: the session waits for a resume.)
    browser
        .send(&[Message::Close(pushwire_protocol::Close {
            code: pushwire_protocol::CloseCode::Normal,
            reason: Text::from("bye"),
        })])
        .await;
    browser.ws.close(None).await.unwrap();
    next_event(&mut alice_events, |e| match e {
        Event::Unsubscribed {
            sender: Sender::Peer(p),
            ..
        } if p.user_id == "webby" => Some(()),
        _ => None,
    })
    .await;
    alice.close();
}

#[tokio::test]
async fn a_foreign_origin_is_refused_with_403() {
    let server = start(WebConfig::default()).await;
    match websocket(&server, Some("https://evil.example")).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }
    // A listed origin passes.
    let server = start(WebConfig {
        allowed_origins: vec!["https://chat.example".into()],
        ..WebConfig::default()
    })
    .await;
    websocket(&server, Some("https://chat.example"))
        .await
        .expect("listed origin");
}

#[tokio::test]
async fn the_chat_page_is_served_at_the_root() {
    let server = start(WebConfig {
        pages: pushwire_tokio::web::chat_pages(),
        ..WebConfig::default()
    })
    .await;
    for (path, needle) in [
        ("/", "<title>"),
        ("/pushwire.js", "export"),
        ("/client.js", "WebSocket"),
    ] {
        let mut stream = tls(&server).await;
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut response = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&response);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{path}: {text}");
        assert!(text.contains(needle), "{path}");
    }
    let mut stream = tls(&server).await;
    stream
        .write_all(b"GET /secret HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    assert!(response.starts_with(b"HTTP/1.1 404 Not Found\r\n"));
}
