//! Forwarding: delivering the feed's changes to the partner's own systems (issue 10, being
//! built). So far: destinations ([`destination`], kept in the store, managed through
//! `/api/destinations` and [`cli`]), the Standard Webhooks signature every delivery will carry
//! ([`sign`]) and when a failed delivery is tried again ([`retry`]).

pub mod cli;
pub mod destination;
pub mod retry;
pub mod send;
pub mod sign;
pub mod worker;
