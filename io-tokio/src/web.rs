//! The browser chat, embedded in the binary: `io-tokio/web/`'s page and the
//! JavaScript client library, served by `pushwire serve --web` on the pushwire port
//! itself (the engine answers plain `GET`s from these pages, and upgrades
//! WebSocket requests; see [`pushwire_engine::web`]).

use bytes::Bytes;
use pushwire_engine::web::WebPage;

const JS: &str = "text/javascript; charset=utf-8";

/// The chat page at `/` (also `/chat.html`) and the library's modules at
/// `/pushwire.js`, `/protocol.js`, `/client.js`, `/hello.js`, `/pushwire.d.ts`.
pub fn chat_pages() -> Vec<WebPage> {
    let chat = Bytes::from_static(include_bytes!("../web/chat.html"));
    vec![
        WebPage::new("/", "text/html; charset=utf-8", chat.clone()),
        WebPage::new("/chat.html", "text/html; charset=utf-8", chat),
        WebPage::new(
            "/pushwire.js",
            JS,
            Bytes::from_static(include_bytes!("../web/pushwire.js")),
        ),
        WebPage::new(
            "/protocol.js",
            JS,
            Bytes::from_static(include_bytes!("../web/protocol.js")),
        ),
        WebPage::new(
            "/client.js",
            JS,
            Bytes::from_static(include_bytes!("../web/client.js")),
        ),
        WebPage::new(
            "/hello.js",
            JS,
            Bytes::from_static(include_bytes!("../web/hello.js")),
        ),
        WebPage::new(
            "/pushwire.d.ts",
            "text/plain; charset=utf-8",
            Bytes::from_static(include_bytes!("../web/pushwire.d.ts")),
        ),
    ]
}
