//! Numeric reason codes carried by Close, Refused, PushRejected, SessionLost and
//! ServerError.
//!
//! Every code enum has an `Other` variant: a code this version does not know decodes
//! as `Other(n)` rather than failing, so peers can add codes without breaking older
//! ones.

/// Declares a `u16`-coded enum with a catch-all `Other(u16)` variant.
macro_rules! wire_code {
    (
        $(#[$meta:meta])*
        $name:ident : $repr:ty {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
            /// A code this version of the protocol does not define.
            Other($repr),
        }

        impl $name {
            /// The numeric value on the wire.
            pub fn to_wire(self) -> $repr {
                match self {
                    $( Self::$variant => $value, )+
                    Self::Other(n) => n,
                }
            }

            /// The variant for a wire value; unknown values become `Other`.
            pub fn from_wire(n: $repr) -> Self {
                match n {
                    $( $value => Self::$variant, )+
                    n => Self::Other(n),
                }
            }
        }

        impl From<$repr> for $name {
            fn from(n: $repr) -> Self {
                Self::from_wire(n)
            }
        }
    };
}

wire_code! {
    /// Why a connection is being closed (the Close message).
    CloseCode: u16 {
        /// Orderly close requested by the application.
        Normal = 0,
        /// The server is shutting down.
        GoingAway = 1,
        /// The peer sent something that violates the protocol.
        ProtocolError = 2,
        /// The peer sent a frame larger than the negotiated limit.
        FrameTooLarge = 3,
        /// No traffic within the keep-alive timeout.
        IdleTimeout = 4,
        /// The client did not complete its Hello within the server's deadline.
        HelloTimeout = 5,
        /// The receiver fell behind: its outbound queue exceeded the limit. Its session
        /// is kept, so it can resume.
        SlowConsumer = 6,
        /// The server hit an internal error.
        InternalError = 7,
        /// The server has too many connections.
        TooManyConnections = 8,
        /// The client rejected the server's certificate.
        ServerRejected = 9,
        /// The server removed this connection on purpose (administrative kick).
        Kicked = 10,
        /// The client's TLS handshake and Hello/Welcome exchange took too long.
        HandshakeTimeout = 11,
    }
}

wire_code! {
    /// Why the server refused a Hello (the Refused message).
    RefuseCode: u16 {
        /// Unknown user or wrong password.
        BadCredentials = 1,
        /// The requested service id is not hosted here.
        UnknownService = 2,
        /// No protocol version in common.
        UnsupportedVersion = 3,
        /// The server, or the user logging in, is at its connection limit (the
        /// reason says which).
        TooManyConnections = 4,
        /// The resume token belongs to another user.
        ResumeNotPermitted = 5,
        /// The Hello was malformed or violated a limit.
        InvalidHello = 6,
        /// The server is shutting down.
        GoingAway = 7,
        /// The application refused for its own reason (see the text).
        NotPermitted = 8,
    }
}

wire_code! {
    /// Why a push command was rejected, wholly or partly (the PushRejected message).
    RejectCode: u16 {
        /// Some group ids are not registered on the server (listed in the message).
        UnknownGroups = 1,
        /// The command named no groups.
        EmptyGroupList = 2,
        /// A server hook refused the operation (listed groups, if any, are the ones
        /// refused).
        NotAuthorized = 3,
        /// The payload exceeds the server's limit.
        PayloadTooLarge = 4,
        /// The receiver user id is empty or too long.
        InvalidReceiver = 5,
        /// The command could not be processed for lack of resources; retry later.
        Busy = 6,
        /// The connection is over the server's publish rate limit: the command (a
        /// publication or user message) was not run; retry later. Defined in
        /// version 4, sent to clients of any version (an older one decodes it as
        /// `Other(7)`).
        RateLimited = 7,
        /// Version 4: the answer (a GroupList, say) would not fit the client's
        /// frame limit (its Hello's `max_frame_size`), so it was not sent.
        AnswerTooLarge = 8,
    }
}

wire_code! {
    /// Why a resumed session could not be continued (the SessionLost message).
    SessionLostReason: u16 {
        /// The server does not know the token (for example after a restart).
        Unknown = 1,
        /// The session existed but its detach timeout expired.
        Expired = 2,
    }
}

wire_code! {
    /// Error codes of a ServerError answer to a request. Applications may use any value
    /// from 1,000 up for their own errors.
    ErrorCode: u32 {
        /// The service has no such method.
        UnknownMethod = 1,
        /// The request payload could not be understood by the method.
        BadRequest = 2,
        /// The handler failed.
        Internal = 3,
        /// The server is shutting down and did not run the request.
        GoingAway = 4,
        /// No service is bound to this connection.
        NoService = 5,
        /// Version 3: the client cancelled the request; it did not start, or its
        /// handler stopped on the cancellation.
        Cancelled = 6,
        /// Version 4: the result would not fit the client's frame limit (its
        /// Hello's `max_frame_size`), so it was not sent.
        ResultTooLarge = 7,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_codes_round_trip_and_unknown_codes_are_kept() {
        for n in 0..=20u16 {
            assert_eq!(CloseCode::from_wire(n).to_wire(), n);
            assert_eq!(RefuseCode::from_wire(n).to_wire(), n);
            assert_eq!(RejectCode::from_wire(n).to_wire(), n);
            assert_eq!(SessionLostReason::from_wire(n).to_wire(), n);
        }
        assert_eq!(CloseCode::from_wire(6), CloseCode::SlowConsumer);
        assert_eq!(CloseCode::from_wire(999), CloseCode::Other(999));
        assert_eq!(ErrorCode::from_wire(1_000), ErrorCode::Other(1_000));
    }
}
